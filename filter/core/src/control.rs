//! The edge's side of the control plane: key sync and usage shipping, sans-I/O.
//!
//! An edge host learns the managed key set from the control plane (`GET /edge/v1/keys`,
//! polled with `If-None-Match` so an unchanged set costs a 304) and ships every usage record
//! to its ledger (`POST /edge/v1/usage`, in batches, off the request path). Both are state
//! machines here; hosts only perform the HTTP calls they ask for, on a timer:
//!
//! * [`KeySync`] decides when to poll, builds the request, and turns an answer into a new
//!   [`KeySnapshot`]. When the control plane is unreachable the edge keeps serving with the
//!   last snapshot it has (static config keys always work); it never forgets a revocation it
//!   has seen, since a snapshot only ever replaces the whole managed set. A key's
//!   `expires_at` is enforced locally, so a rotated-out secret stops at the end of its grace
//!   period even between polls.
//! * [`UsageShipper`] buffers records (bounded: when full, the oldest record is dropped and
//!   counted), batches them, and keeps a failed batch for the next try; the ledger is
//!   idempotent by `request_id`, so a batch retried after a lost answer is never counted twice.
//!   Records without a key (401s) are not shipped: there is no one to bill.
//!
//! The bound on key propagation is `key_sync_interval_ms` plus one poll's round trip (plus
//! the host's timer granularity): 1 s + a few ms with the defaults, well inside 2 s.

use std::collections::VecDeque;

use serde::Deserialize;

use crate::error::{ErrorKind, GatewayError};
use crate::gateway::UpstreamRequest;
use crate::keys::GatewayKey;
use crate::limits::{Estimate, Quota, Refusal, Scope};
use crate::providers::BaseUrl;
use crate::usage::UsageRecord;

/// Where the control plane is and how the edge talks to it (the gateway config's
/// `control_plane` section).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Scheme, host and optional path prefix of the control plane, e.g.
    /// `http://127.0.0.1:8100`.
    pub base_url: String,
    /// The host's upstream name for it (Envoy cluster, host-runner cluster).
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Name of the secret holding the edge token (never the token itself).
    pub token_secret: String,
    /// How often the key set is polled.
    #[serde(default = "default_key_sync_interval_ms")]
    pub key_sync_interval_ms: u64,
    /// Most records in one usage batch.
    #[serde(default = "default_usage_batch_max")]
    pub usage_batch_max: usize,
    /// Longest a record waits before its batch is sent.
    #[serde(default = "default_usage_flush_ms")]
    pub usage_flush_ms: u64,
    /// Most records buffered while the control plane is unreachable; beyond it the oldest
    /// are dropped (and counted).
    #[serde(default = "default_usage_buffer_max")]
    pub usage_buffer_max: usize,
    /// Deadline of one call to the control plane.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
}

fn default_cluster() -> String {
    "control_plane".into()
}
fn default_key_sync_interval_ms() -> u64 {
    1_000
}
fn default_usage_batch_max() -> usize {
    500
}
fn default_usage_flush_ms() -> u64 {
    1_000
}
fn default_usage_buffer_max() -> usize {
    100_000
}
fn default_call_timeout_ms() -> u64 {
    5_000
}

impl ControlPlaneConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        BaseUrl::parse(&self.base_url).map_err(|e| format!("control_plane.base_url: {e}"))?;
        if self.token_secret.is_empty() || self.cluster.is_empty() {
            return Err("control_plane: `token_secret` and `cluster` must not be empty".into());
        }
        if self.key_sync_interval_ms == 0
            || self.usage_batch_max == 0
            || self.usage_buffer_max < self.usage_batch_max
            || self.call_timeout_ms == 0
        {
            return Err(
                "control_plane: intervals, timeouts and batch sizes must be > 0, and \
                        usage_buffer_max at least usage_batch_max"
                    .into(),
            );
        }
        Ok(())
    }

    fn request(
        &self,
        method: &'static str,
        path: &str,
        token: &str,
        extra: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> UpstreamRequest {
        // Validated at load time.
        let base = BaseUrl::parse(&self.base_url).unwrap_or(BaseUrl {
            scheme: "http".into(),
            authority: "invalid".into(),
            prefix: String::new(),
        });
        let mut headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        headers.extend(extra);
        UpstreamRequest {
            cluster: self.cluster.clone(),
            scheme: base.scheme,
            authority: base.authority,
            method,
            path: format!("{}{path}", base.prefix),
            headers,
            body,
            timeout_ms: self.call_timeout_ms,
        }
    }
}

/// The managed key set at one version.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct KeySnapshot {
    /// Increases with every change on the control plane.
    pub version: u64,
    /// The keys; a rotated key in its grace period appears twice under one id.
    pub keys: Vec<GatewayKey>,
    /// Limits of the teams that have some.
    #[serde(default)]
    pub teams: std::collections::BTreeMap<String, Quota>,
    /// Provider credentials the control plane mints and refreshes, by the secret name a
    /// provider's config gives (`api_key_secret`): today Vertex access tokens from a
    /// service-account key. Key custody and the token exchange stay on the native side; the
    /// edge only holds the short-lived token, and a new one arrives with the next key sync.
    #[serde(default)]
    pub credentials: std::collections::BTreeMap<String, crate::gateway::Secret>,
}

/// `POST /edge/v1/admit`: admission against the control plane's counters, so limits and
/// budgets hold across every edge instance. The reservation is settled when the request's
/// usage record reaches the ledger.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct AdmitRequest {
    /// The request's id (its usage record will carry it).
    pub request_id: String,
    /// The scopes whose limits apply, as the edge knows them.
    pub scopes: Vec<Scope>,
    /// Upper bounds of the request's tokens and cost.
    pub estimate: Estimate,
}

/// The answer to [`AdmitRequest`] (200 when admitted, 429 when refused).
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct AdmitAnswer {
    /// `x-ratelimit-*` headers for the client.
    pub headers: Vec<(String, String)>,
    /// Why the request was refused, when it was.
    #[serde(default)]
    pub refusal: Option<RefusalWire>,
}

/// A refusal on the wire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct RefusalWire {
    /// The message for the client.
    pub message: String,
    /// The OpenAI-style code.
    pub code: String,
    /// Seconds to wait.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

impl From<&Refusal> for RefusalWire {
    fn from(r: &Refusal) -> Self {
        RefusalWire {
            message: r.error.message.clone(),
            code: r.error.code.unwrap_or("rate_limit_exceeded").to_string(),
            retry_after: r.error.retry_after,
        }
    }
}

impl RefusalWire {
    /// The client's error.
    pub fn error(&self) -> GatewayError {
        let code = match self.code.as_str() {
            "insufficient_quota" => "insufficient_quota",
            "concurrency_limit_exceeded" => "concurrency_limit_exceeded",
            _ => "rate_limit_exceeded",
        };
        let mut err =
            GatewayError::new(ErrorKind::RateLimited, self.message.clone()).with_code(code);
        err.retry_after = self.retry_after;
        err
    }
}

impl ControlPlaneConfig {
    /// The admission call for a request.
    pub fn admit_request(&self, token: &str, admit: &AdmitRequest) -> UpstreamRequest {
        self.request(
            "POST",
            "/edge/v1/admit",
            token,
            vec![("content-type".into(), "application/json".into())],
            serde_json::to_vec(admit).unwrap_or_default(),
        )
    }
}

impl KeySnapshot {
    /// Parses the body of `GET /edge/v1/keys`, rejecting keys that are not well formed.
    pub fn parse(body: &[u8]) -> Result<KeySnapshot, String> {
        let snapshot: KeySnapshot =
            serde_json::from_slice(body).map_err(|e| format!("invalid key snapshot: {e}"))?;
        for key in &snapshot.keys {
            key.validate()?;
        }
        Ok(snapshot)
    }
}

/// What a key-sync answer came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncOutcome {
    /// A new key set: swap it in.
    Updated(KeySnapshot),
    /// The set did not change.
    Unchanged,
    /// The poll failed; the last snapshot stays in force.
    Failed(String),
}

/// When to poll for keys, and what an answer means.
#[derive(Debug, Clone, Default)]
pub struct KeySync {
    version: Option<u64>,
    next_poll_ms: u64,
    in_flight: bool,
    /// Consecutive failed polls (for logs and metrics).
    pub failures: u32,
    /// When the key set was last confirmed current, unix ms.
    pub confirmed_at_ms: Option<u64>,
}

impl KeySync {
    /// A key sync that already has `version` (a host that keeps the snapshot between
    /// instances, such as a Spin component, resumes from it).
    pub fn resume(version: Option<u64>) -> Self {
        KeySync {
            version,
            ..KeySync::default()
        }
    }

    /// The version in force, once a snapshot was applied.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// The poll to send now, if one is due (`token` is the resolved edge token).
    pub fn poll(
        &mut self,
        cfg: &ControlPlaneConfig,
        token: &str,
        now_ms: u64,
    ) -> Option<UpstreamRequest> {
        if self.in_flight || now_ms < self.next_poll_ms {
            return None;
        }
        self.in_flight = true;
        self.next_poll_ms = now_ms + cfg.key_sync_interval_ms;
        let etag = self
            .version
            .map(|v| vec![("if-none-match".to_string(), format!("\"{v}\""))])
            .unwrap_or_default();
        Some(cfg.request("GET", "/edge/v1/keys", token, etag, Vec::new()))
    }

    /// The poll's answer: `None` when the call failed without one.
    pub fn on_answer(&mut self, answer: Option<(u16, &[u8])>, now_ms: u64) -> SyncOutcome {
        self.in_flight = false;
        let outcome = match answer {
            None => SyncOutcome::Failed("the control plane did not answer".into()),
            Some((304, _)) if self.version.is_some() => SyncOutcome::Unchanged,
            Some((200, body)) => match KeySnapshot::parse(body) {
                Ok(snapshot) if Some(snapshot.version) == self.version => SyncOutcome::Unchanged,
                Ok(snapshot) => SyncOutcome::Updated(snapshot),
                Err(e) => SyncOutcome::Failed(e),
            },
            Some((status, _)) => {
                SyncOutcome::Failed(format!("the control plane answered HTTP {status}"))
            }
        };
        match &outcome {
            SyncOutcome::Failed(_) => self.failures += 1,
            SyncOutcome::Updated(snapshot) => {
                self.version = Some(snapshot.version);
                self.failures = 0;
                self.confirmed_at_ms = Some(now_ms);
            }
            SyncOutcome::Unchanged => {
                self.failures = 0;
                self.confirmed_at_ms = Some(now_ms);
            }
        }
        outcome
    }
}

/// Decides which of a host's workers polls for keys: each worker tries to hold a lease,
/// `<holder>,<until_ms>`, in the host's shared data (written with compare-and-swap), and only
/// the holder polls; the others apply the snapshot it shares. Returns the lease to write
/// when `me` may take or renew it: it is free, expired, unreadable, or already `me`'s.
pub fn claim_poller_lease(
    current: Option<&[u8]>,
    me: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Option<String> {
    let held_by_other = current
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| text.rsplit_once(','))
        .and_then(|(holder, until)| Some((holder, until.parse::<u64>().ok()?)))
        .is_some_and(|(holder, until)| holder != me && until > now_ms);
    (!held_by_other).then(|| format!("{me},{}", now_ms + ttl_ms))
}

/// Buffers usage records and ships them in batches.
#[derive(Debug, Default)]
pub struct UsageShipper {
    buffer: VecDeque<String>,
    /// The batch on the wire: its records, kept until the ledger confirms them.
    in_flight: Option<Vec<String>>,
    oldest_at_ms: Option<u64>,
    /// Records dropped because the buffer was full, since start.
    pub dropped: u64,
    /// Records the ledger confirmed, since start.
    pub shipped: u64,
}

impl UsageShipper {
    /// Queues one record (unauthenticated requests are not billed, so not shipped).
    pub fn push(&mut self, record: &UsageRecord, cfg: &ControlPlaneConfig, now_ms: u64) {
        if !record.key_id.is_empty() {
            self.push_json(record.to_json(), cfg, now_ms);
        }
    }

    /// Queues a record already in its JSON form (one kept from an earlier, failed delivery).
    pub fn push_json(&mut self, json: String, cfg: &ControlPlaneConfig, now_ms: u64) {
        if self.buffer.len() >= cfg.usage_buffer_max {
            self.buffer.pop_front();
            self.dropped += 1;
        }
        self.buffer.push_back(json);
        self.oldest_at_ms.get_or_insert(now_ms);
    }

    /// Records waiting, the batch on the wire included.
    pub fn pending(&self) -> usize {
        self.buffer.len() + self.in_flight.as_ref().map_or(0, Vec::len)
    }

    /// The batch to send now, if one is due: full, or its oldest record waited long enough.
    pub fn batch(
        &mut self,
        cfg: &ControlPlaneConfig,
        token: &str,
        now_ms: u64,
    ) -> Option<UpstreamRequest> {
        if self.in_flight.is_some() || self.buffer.is_empty() {
            return None;
        }
        let due = self.buffer.len() >= cfg.usage_batch_max
            || self
                .oldest_at_ms
                .is_some_and(|t| now_ms.saturating_sub(t) >= cfg.usage_flush_ms);
        if !due {
            return None;
        }
        let n = self.buffer.len().min(cfg.usage_batch_max);
        let batch: Vec<String> = self.buffer.drain(..n).collect();
        self.oldest_at_ms = (!self.buffer.is_empty()).then_some(now_ms);
        let mut body = Vec::with_capacity(batch.iter().map(|r| r.len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"records\":[");
        for (i, record) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(record.as_bytes());
        }
        body.extend_from_slice(b"]}");
        self.in_flight = Some(batch);
        Some(cfg.request(
            "POST",
            "/edge/v1/usage",
            token,
            vec![("content-type".into(), "application/json".into())],
            body,
        ))
    }

    /// The batch's answer (`None`: no answer). Returns a line for the log when something is
    /// wrong. A 5xx or no answer keeps the batch for the next try; a 4xx means the ledger will
    /// never take it (a bug, not an outage): it is dropped and counted.
    pub fn on_answer(&mut self, answer: Option<u16>, now_ms: u64) -> Option<String> {
        let batch = self.in_flight.take()?;
        match answer {
            Some(status) if (200..300).contains(&status) => {
                self.shipped += batch.len() as u64;
                None
            }
            Some(status) if (400..500).contains(&status) && status != 408 && status != 429 => {
                self.dropped += batch.len() as u64;
                Some(format!(
                    "switchyard: the ledger refused a batch of {} usage records (HTTP {status}); \
                     dropped",
                    batch.len()
                ))
            }
            other => {
                let n = batch.len();
                for record in batch.into_iter().rev() {
                    self.buffer.push_front(record);
                }
                self.oldest_at_ms = Some(now_ms);
                Some(format!(
                    "switchyard: usage batch of {n} not delivered ({}); kept for the next try",
                    other.map_or("no answer".to_string(), |s| format!("HTTP {s}"))
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ControlPlaneConfig {
        serde_json::from_str(
            r#"{"base_url": "http://127.0.0.1:8100/cp", "token_secret": "T",
                "usage_batch_max": 3, "usage_buffer_max": 5, "usage_flush_ms": 100}"#,
        )
        .unwrap()
    }

    fn record(id: &str, key: &str) -> UsageRecord {
        UsageRecord {
            request_id: id.into(),
            timestamp_ms: 1,
            key_id: key.into(),
            team: None,
            model: "m".into(),
            provider: "p".into(),
            deployment: "p/m".into(),
            input_tokens: 1,
            cached_input_tokens: 0,
            output_tokens: 1,
            cost: 0.0,
            price: None,
            status: 200,
            attempts: 1,
            stream: false,
            latency_ms: None,
            ttft_ms: None,
        }
    }

    #[test]
    fn key_sync_polls_on_its_interval_with_the_version_as_etag() {
        let cfg = cfg();
        let mut sync = KeySync::default();
        let first = sync.poll(&cfg, "tok", 1_000).expect("due at once");
        assert_eq!(
            (first.method, first.path.as_str()),
            ("GET", "/cp/edge/v1/keys")
        );
        assert!(first
            .headers
            .contains(&("authorization".into(), "Bearer tok".into())));
        assert!(
            sync.poll(&cfg, "tok", 1_000).is_none(),
            "one poll at a time"
        );
        let body = br#"{"version": 7, "keys": [{"id": "k", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "models": ["*"], "expires_at": null, "label": null, "team": "t"}]}"#;
        let SyncOutcome::Updated(snapshot) = sync.on_answer(Some((200, body)), 1_010) else {
            panic!("a new snapshot")
        };
        assert_eq!(snapshot.version, 7);
        assert_eq!(snapshot.keys[0].team.as_deref(), Some("t"));
        assert!(
            sync.poll(&cfg, "tok", 1_500).is_none(),
            "not before the interval"
        );
        let second = sync.poll(&cfg, "tok", 2_000).unwrap();
        assert!(second
            .headers
            .contains(&("if-none-match".into(), "\"7\"".into())));
        assert_eq!(
            sync.on_answer(Some((304, b"")), 2_001),
            SyncOutcome::Unchanged
        );
        sync.poll(&cfg, "tok", 3_000).unwrap();
        assert!(matches!(
            sync.on_answer(None, 3_100),
            SyncOutcome::Failed(_)
        ));
        assert_eq!((sync.failures, sync.version()), (1, Some(7)));
        sync.poll(&cfg, "tok", 4_000).unwrap();
        assert!(matches!(
            sync.on_answer(Some((200, b"{\"version\": 8, \"keys\": [{\"id\": \"x\", \"sha256\": \"short\"}]}")), 4_001),
            SyncOutcome::Failed(e) if e.contains("sha256")
        ));
        assert_eq!(sync.version(), Some(7), "a bad snapshot changes nothing");
    }

    #[test]
    fn one_worker_at_a_time_holds_the_poller_lease() {
        let lease = claim_poller_lease(None, "a", 1_000, 3_000).unwrap();
        assert_eq!(lease, "a,4000");
        assert_eq!(
            claim_poller_lease(Some(lease.as_bytes()), "b", 3_999, 3_000),
            None
        );
        assert_eq!(
            claim_poller_lease(Some(lease.as_bytes()), "a", 3_000, 3_000).as_deref(),
            Some("a,6000"),
            "the holder renews"
        );
        assert_eq!(
            claim_poller_lease(Some(lease.as_bytes()), "b", 4_000, 3_000).as_deref(),
            Some("b,7000"),
            "an expired lease is free"
        );
        assert!(claim_poller_lease(Some(b"garbage"), "b", 0, 10).is_some());
    }

    #[test]
    fn usage_batches_when_full_or_old_and_keeps_failed_batches() {
        let cfg = cfg();
        let mut ship = UsageShipper::default();
        ship.push(&record("a", "k"), &cfg, 0);
        ship.push(&record("anon", ""), &cfg, 0);
        assert_eq!(ship.pending(), 1, "records without a key are not billed");
        assert!(ship.batch(&cfg, "tok", 50).is_none(), "not full, not old");
        let req = ship.batch(&cfg, "tok", 100).expect("old enough");
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(body["records"][0]["request_id"], "a");
        assert_eq!(req.path, "/cp/edge/v1/usage");
        // No answer: the batch goes back in front, in order.
        for id in ["b", "c"] {
            ship.push(&record(id, "k"), &cfg, 110);
        }
        assert!(ship.on_answer(None, 120).is_some());
        assert_eq!(ship.pending(), 3);
        let req = ship.batch(&cfg, "tok", 120).expect("full");
        let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&req.body).unwrap()
            ["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(ship.on_answer(Some(200), 130), None);
        assert_eq!((ship.shipped, ship.pending()), (3, 0));
        // A full buffer drops its oldest records and counts them.
        for i in 0..7 {
            ship.push(&record(&format!("r{i}"), "k"), &cfg, 200);
        }
        assert_eq!((ship.pending(), ship.dropped), (5, 2));
        // A refused batch (4xx) is dropped and counted, never retried.
        ship.batch(&cfg, "tok", 200).unwrap();
        assert!(ship.on_answer(Some(400), 210).unwrap().contains("refused"));
        assert_eq!((ship.pending(), ship.dropped), (2, 5));
    }
}
