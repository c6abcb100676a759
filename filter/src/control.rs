//! The root context's part of the control plane: key sync and usage shipping on a tick.
//!
//! The core decides everything (`switchyard_core::control`); this performs the calls. One
//! worker at a time holds the poller lease in shared data and polls `GET /edge/v1/keys`; it
//! shares each new snapshot in shared data, and every worker's VM applies it on its next tick
//! (a version check costs one small shared-data read) — or sooner, when a request's key is
//! unknown to it (see [`shared_snapshot_newer_than`]). Usage records stay in the VM that
//! served them: `on_log` queues them in this VM's [`UsageShipper`], and the same VM's root
//! context ships them in batches — off the request path, with no cross-VM queue.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::hostcalls;
use switchyard_core::control::{
    claim_poller_lease, ControlPlaneConfig, KeySnapshot, KeySync, SyncOutcome, UsageShipper,
};
use switchyard_core::usage::UsageRecord;

use crate::metrics;

/// How often the root context looks at its timers: a fraction of the key-sync interval, so
/// the propagation bound stays the interval plus a round trip.
pub const TICK: Duration = Duration::from_millis(250);

const LEASE_KEY: &str = "switchyard/keys/poller";
const VERSION_KEY: &str = "switchyard/keys/version";
const SNAPSHOT_KEY: &str = "switchyard/keys/snapshot";

thread_local! {
    /// This VM's usage buffer; `None` without a control plane.
    static SHIPPER: RefCell<Option<(ControlPlaneConfig, UsageShipper)>> = const { RefCell::new(None) };
}

/// Queues a finished request's usage record for the ledger (no-op without a control plane).
pub fn ship(record: &UsageRecord, now_ms: u64) {
    SHIPPER.with(|s| {
        if let Some((cfg, shipper)) = s.borrow_mut().as_mut() {
            shipper.push(record, cfg, now_ms);
        }
    });
}

/// The key set another worker shared, when its version differs from `applied` (the version
/// the caller has in force); `None` when none was shared. Only for a gateway that syncs keys
/// from a control plane (shared data is per VM id, which other filter configs may share).
///
/// A request whose key is unknown asks this before it is refused: a key the poller has
/// just synced is then accepted on every worker at once, not only after each worker's next
/// tick (a client that saw its new key work once must not see it refused on the next
/// connection). It costs one small shared-data read, and only on that refusal path.
pub fn shared_snapshot_newer_than(applied: Option<u64>) -> Option<KeySnapshot> {
    let (version, _) = hostcalls::get_shared_data(VERSION_KEY).ok()?;
    let version: u64 = std::str::from_utf8(&version?).ok()?.parse().ok()?;
    if Some(version) == applied {
        return None;
    }
    let (body, _) = hostcalls::get_shared_data(SNAPSHOT_KEY).ok()?;
    KeySnapshot::parse(&body?).ok()
}

/// What a pending call is for.
enum Call {
    Keys,
    Usage,
}

/// The root context's control-plane state.
pub struct ControlLink {
    cfg: ControlPlaneConfig,
    token: String,
    /// This VM's name in the poller lease.
    me: String,
    sync: KeySync,
    /// The key-set version this VM has applied.
    applied: Option<u64>,
    calls: HashMap<u32, Call>,
    reported_shipped: u64,
    reported_dropped: u64,
}

/// What a tick or a call answer asks of the root context.
pub enum Change {
    /// Swap this key set in.
    Keys(KeySnapshot),
}

impl ControlLink {
    /// Starts the link; `me` names this VM.
    pub fn new(cfg: ControlPlaneConfig, token: String, me: String) -> Self {
        SHIPPER.with(|s| *s.borrow_mut() = Some((cfg.clone(), UsageShipper::default())));
        ControlLink {
            cfg,
            token,
            me,
            sync: KeySync::default(),
            applied: None,
            calls: HashMap::new(),
            reported_shipped: 0,
            reported_dropped: 0,
        }
    }

    /// The periodic work: apply a snapshot another worker shared, poll if this VM holds the
    /// lease, and send a usage batch when one is due.
    pub fn on_tick(&mut self, now_ms: u64) -> Option<Change> {
        let change = self.shared_snapshot();
        if self.hold_lease(now_ms) {
            if let Some(request) = self.sync.poll(&self.cfg, &self.token, now_ms) {
                self.dispatch(request, Call::Keys);
            }
        }
        let batch = SHIPPER.with(|s| {
            let mut s = s.borrow_mut();
            let (cfg, shipper) = s.as_mut()?;
            shipper.batch(cfg, &self.token, now_ms)
        });
        if let Some(request) = batch {
            self.dispatch(request, Call::Usage);
        }
        self.report();
        change
    }

    /// A call's answer (`status` is `None` when it failed without one).
    pub fn on_answer(
        &mut self,
        token: u32,
        status: Option<u16>,
        body: &[u8],
        now_ms: u64,
    ) -> Option<Change> {
        match self.calls.remove(&token)? {
            Call::Keys => match self.sync.on_answer(status.map(|s| (s, body)), now_ms) {
                SyncOutcome::Updated(snapshot) => {
                    // Share it with the other workers, then apply it here.
                    let _ = hostcalls::set_shared_data(SNAPSHOT_KEY, Some(body), None);
                    let version = snapshot.version.to_string();
                    let _ = hostcalls::set_shared_data(VERSION_KEY, Some(version.as_bytes()), None);
                    self.applied = Some(snapshot.version);
                    log::info!(
                        "switchyard: key set version {} from the control plane ({} keys)",
                        snapshot.version,
                        snapshot.keys.len()
                    );
                    Some(Change::Keys(snapshot))
                }
                SyncOutcome::Unchanged => None,
                SyncOutcome::Failed(why) => {
                    metrics::count("switchyard_control_plane_errors_total", 1);
                    // Once when it starts failing, then every minute or so.
                    if self.sync.failures == 1 || self.sync.failures.is_multiple_of(240) {
                        log::warn!(
                            "switchyard: key sync failed ({why}); serving with the last key set \
                             (version {:?}) — {} failures in a row",
                            self.applied,
                            self.sync.failures
                        );
                    }
                    None
                }
            },
            Call::Usage => {
                let line = SHIPPER.with(|s| {
                    s.borrow_mut()
                        .as_mut()
                        .and_then(|(_, shipper)| shipper.on_answer(status, now_ms))
                });
                if let Some(line) = line {
                    metrics::count("switchyard_control_plane_errors_total", 1);
                    log::warn!("{line}");
                }
                self.report();
                None
            }
        }
    }

    fn dispatch(&mut self, request: switchyard_core::UpstreamRequest, call: Call) {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", request.method),
            (":path", &request.path),
            (":authority", &request.authority),
            (":scheme", &request.scheme),
        ];
        headers.extend(
            request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let sent = hostcalls::dispatch_http_call(
            &request.cluster,
            headers,
            Some(&request.body),
            vec![],
            Duration::from_millis(request.timeout_ms),
        );
        match sent {
            Ok(token) => {
                self.calls.insert(token, call);
            }
            Err(status) => {
                log::warn!(
                    "switchyard: cannot call the control plane (cluster `{}`): {status:?}",
                    request.cluster
                );
                // Hand the failure to the state machine so it retries later.
                match call {
                    Call::Keys => {
                        self.sync.on_answer(None, 0);
                    }
                    Call::Usage => SHIPPER.with(|s| {
                        if let Some((_, shipper)) = s.borrow_mut().as_mut() {
                            shipper.on_answer(None, 0);
                        }
                    }),
                }
            }
        }
    }

    /// Applies the snapshot the poller shared, when it is newer than this VM's.
    fn shared_snapshot(&mut self) -> Option<Change> {
        let snapshot = shared_snapshot_newer_than(self.applied)?;
        self.applied = Some(snapshot.version);
        Some(Change::Keys(snapshot))
    }

    /// Takes or renews the poller lease; whether this VM polls.
    fn hold_lease(&self, now_ms: u64) -> bool {
        let Ok((current, cas)) = hostcalls::get_shared_data(LEASE_KEY) else {
            return false;
        };
        let ttl = 3 * self.cfg.key_sync_interval_ms.max(TICK.as_millis() as u64);
        match claim_poller_lease(current.as_deref(), &self.me, now_ms, ttl) {
            Some(lease) => {
                hostcalls::set_shared_data(LEASE_KEY, Some(lease.as_bytes()), cas).is_ok()
            }
            None => false,
        }
    }

    /// Brings the usage counters up to date.
    fn report(&mut self) {
        let (shipped, dropped, pending) = SHIPPER.with(|s| {
            s.borrow()
                .as_ref()
                .map_or((0, 0, 0), |(_, sh)| (sh.shipped, sh.dropped, sh.pending()))
        });
        metrics::count(
            "switchyard_usage_shipped_total",
            shipped - self.reported_shipped,
        );
        metrics::count(
            "switchyard_usage_dropped_total",
            dropped - self.reported_dropped,
        );
        metrics::gauge("switchyard_usage_pending", pending as i64);
        if let Some(version) = self.applied {
            metrics::gauge("switchyard_keys_version", version as i64);
        }
        self.reported_shipped = shipped;
        self.reported_dropped = dropped;
    }
}
