//! The control plane from a Spin component: managed keys through a short-lived cache in the
//! key-value store, and usage shipped after each answer.
//!
//! Spin runs a fresh instance per request and no background work, so the core's
//! (`switchyard_core::control`) timers run on requests instead:
//!
//! * Keys: the last snapshot and when it was fetched live in the `default` key-value store.
//!   A request that finds it older than `key_sync_interval_ms` polls the control plane
//!   (`If-None-Match`, so mostly a 304) before it is authenticated; every other request
//!   applies the stored snapshot. The propagation bound is the interval plus one poll.
//!   A failed poll is stored as a poll too, so an unreachable control plane costs one
//!   attempt per interval, not one per request; the last snapshot stays in force meanwhile.
//! * Usage: once the client has its answer, the request's record is posted to the ledger
//!   (a batch of one, plus any backlog). A record that cannot be delivered waits in the
//!   key-value store (`switchyard/usage/pending/<request id>`) and goes with the next
//!   successful post; the ledger is idempotent by request id.

use std::cell::RefCell;
use std::rc::Rc;

use spin_sdk::key_value::Store;
use switchyard_core::control::{KeySnapshot, KeySync, SyncOutcome, UsageShipper};
use switchyard_core::usage::UsageRecord;
use switchyard_core::Gateway;

use crate::log;
use crate::outbound::{self, Deadline};

const SNAPSHOT_KEY: &str = "switchyard/keys/snapshot";
const POLLED_KEY: &str = "switchyard/keys/polled";
const PENDING_PREFIX: &str = "switchyard/usage/pending/";
/// Most queued records kept while the control plane is unreachable.
const MAX_PENDING: usize = 10_000;

/// The gateway with the control plane's current key set (polling first when it is due).
///
/// An instance that serves several requests (a host that reuses instances) keeps the
/// gateway it built from the stored snapshot, and builds it again only when the snapshot's
/// bytes or the base gateway change.
pub async fn with_managed_keys(gateway: Rc<Gateway>) -> Rc<Gateway> {
    let Some((cfg, Some(token))) = gateway.control_plane() else {
        return gateway;
    };
    let Ok(store) = Store::open_default() else {
        return gateway;
    };
    let now = now_ms();
    let stored_body = store.get(SNAPSHOT_KEY).ok().flatten();
    let polled_at: u64 = store
        .get(POLLED_KEY)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0);
    let sync_due = now.saturating_sub(polled_at) >= cfg.key_sync_interval_ms;
    if !sync_due {
        if let Some(kept) = stored_body.as_deref().and_then(|body| kept(&gateway, body)) {
            return kept;
        }
    }
    let mut snapshot = stored_body.and_then(|body| Some((KeySnapshot::parse(&body).ok()?, body)));
    if sync_due {
        let _ = store.set(POLLED_KEY, now.to_string().as_bytes());
        let mut sync = KeySync::resume(snapshot.as_ref().map(|(s, _)| s.version));
        if let Some(request) = sync.poll(cfg, token, now) {
            let deadline = Deadline::after_ms(request.timeout_ms);
            let answer = match outbound::send(&request, deadline).await {
                Ok(response) => {
                    let status = response.status();
                    outbound::read_to_end(&response, deadline)
                        .await
                        .ok()
                        .map(|body| (status, body))
                }
                Err(_) => None,
            };
            match sync.on_answer(answer.as_ref().map(|(s, b)| (*s, b.as_slice())), now_ms()) {
                SyncOutcome::Updated(fresh) => {
                    let body = answer.map(|(_, body)| body).unwrap_or_default();
                    let _ = store.set(SNAPSHOT_KEY, &body);
                    snapshot = Some((fresh, body));
                }
                SyncOutcome::Unchanged => {}
                SyncOutcome::Failed(why) => log::line(&format!(
                    "switchyard: key sync failed ({why}); serving with the last key set"
                )),
            }
        }
    }
    match snapshot {
        Some((snapshot, body)) => {
            let managed = Rc::new(gateway.with_managed_keys(snapshot));
            MANAGED.set(Some(Managed {
                base: gateway,
                snapshot: body,
                gateway: managed.clone(),
            }));
            managed
        }
        None => gateway,
    }
}

/// The gateway this instance built with a key snapshot, for its next request.
struct Managed {
    /// The gateway the snapshot was applied to.
    base: Rc<Gateway>,
    /// The snapshot's stored bytes.
    snapshot: Vec<u8>,
    gateway: Rc<Gateway>,
}

thread_local! {
    static MANAGED: RefCell<Option<Managed>> = const { RefCell::new(None) };
}

/// The gateway built earlier in this instance from `base` and this very snapshot, if any.
fn kept(base: &Rc<Gateway>, snapshot: &[u8]) -> Option<Rc<Gateway>> {
    MANAGED.with_borrow(|managed| {
        managed
            .as_ref()
            .filter(|m| Rc::ptr_eq(&m.base, base) && m.snapshot == snapshot)
            .map(|m| m.gateway.clone())
    })
}

/// Ships a finished request's record, with whatever earlier records are still waiting.
pub async fn ship(gateway: &Gateway, record: &UsageRecord) {
    let Some((cfg, Some(token))) = gateway.control_plane() else {
        return;
    };
    if record.key_id.is_empty() {
        return;
    }
    let Ok(store) = Store::open_default() else {
        return;
    };
    let mut cfg = cfg.clone();
    cfg.usage_flush_ms = 0; // no later moment to wait for in a per-request instance
    let mut backlog: Vec<String> = store
        .get_keys()
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.starts_with(PENDING_PREFIX))
        .collect();
    let waiting = backlog.len();
    backlog.truncate(cfg.usage_batch_max.saturating_sub(1));
    let mut shipper = UsageShipper::default();
    for key in &backlog {
        if let Ok(Some(bytes)) = store.get(key) {
            if let Ok(json) = String::from_utf8(bytes) {
                shipper.push_json(json, &cfg, 0);
            }
        }
    }
    shipper.push(record, &cfg, 0);
    let Some(request) = shipper.batch(&cfg, token, 0) else {
        return;
    };
    let deadline = Deadline::after_ms(request.timeout_ms);
    let status = match outbound::send(&request, deadline).await {
        Ok(response) => Some(response.status()),
        Err(_) => None,
    };
    let failure = shipper.on_answer(status, 0);
    if shipper.shipped > 0 || shipper.dropped > 0 {
        for key in &backlog {
            let _ = store.delete(key);
        }
        return;
    }
    if let Some(line) = failure {
        log::line(&line);
    }
    if waiting < MAX_PENDING {
        let key = format!("{PENDING_PREFIX}{}", record.request_id);
        let _ = store.set(&key, record.to_json().as_bytes());
    } else {
        log::line("switchyard: usage backlog full; a record was dropped");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
