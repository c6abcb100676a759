//! One request's whole life, as a sans-I/O state machine: every host drives it the same way.
//!
//! A host feeds an [`Exchange`] what happens — the request head and body, each attempt's
//! response head, body or chunks, an attempt's failure — and performs the [`Action`]s it
//! answers: read the body, send attempt N, start the client's response, stream these bytes,
//! reply with this complete answer. When the host is done with the request (or the client
//! went away) it calls [`Exchange::finish`] and gets the request's one usage record. Every
//! decision — admission, the attempt chain, per-attempt deadlines from the remaining total,
//! falling back or not, what the client gets when something fails before or after the first
//! byte, passive health, the status that is metered — is made here, once, for the Envoy
//! filter, host-runner and the Spin component alike.
//!
//! # Decided semantics
//!
//! **Falling back.** An attempt *fails* when it cannot be sent, cannot connect, times out,
//! is reset before its answer is complete, answers a status in the model's `retry_on` list,
//! or answers 2xx with a body that cannot be read (invalid JSON, or a stream that is cut
//! short or malformed while the host still holds all of it). A failure moves on to the next
//! deployment while nothing has reached the client and one is left within
//! `total_timeout_ms`; each attempt's deadline is `attempt_timeout_ms` capped by what is
//! left of the total. Exception: a `retry_on` status from the *only* attempt the chain can
//! make is the answer (the provider's own error, `Retry-After` included), not a failure. When
//! every attempt failed the client gets one error listing them (504 if all timed out, 429 if
//! the last was rate limited, else 502). A non-retryable error status is the answer.
//! After the first byte of a streamed answer there is no switching: a failure ends the stream
//! with the dialect's error event.
//!
//! **Relaying.** Where the gateway opts in (`edge.route_complete_answers`), the chain's
//! last attempt of a complete answer that is the upstream's bytes unchanged (a same-format
//! fast path, embeddings) is not held: [`Action::RelayResponse`] starts the client's
//! response with its head and the body passes as it arrives, read on the way for its
//! `usage` ([`crate::relay`]). Nothing can replace bytes that went out, so a relayed body
//! that breaks off, or that is not one JSON object, reaches the client as it came and is
//! metered 502 (held, it would have been the dialect's 502). Attempts a fallback could
//! follow, and translated answers, are always held and judged whole.
//!
//! **Health.** A failed attempt counts against its deployment (and may eject it); an attempt
//! that answered 2xx with a readable body counts for it, with its latency; an attempt that
//! answered a final, non-retryable error counts neither way (the deployment worked, the
//! request did not); an attempt that could not be sent (e.g. a translation the provider
//! cannot take) is not the deployment's fault and is not counted.
//!
//! **The metered status** (the usage record's `status`) is the HTTP status the client
//! received, with two refinements: a streamed answer that ended in an error event is metered
//! 502 (its status line said 200, but the answer failed), and a client that went away before
//! it had the whole answer is metered 499 (nginx's "client closed request"), unless the
//! stream had already delivered its terminal event. A request whose answer the host could
//! not deliver for a reason it does not report is metered as the host says the client saw
//! it, else 502.
//!
//! **Waiting for capacity.** When every deployment of the model is busy — at its own limits,
//! or (for some of them) its provider answered this request 429 — the request joins the
//! model's bounded queue ([`crate::queue`]); a deployment whose provider answered 429 is
//! skipped by that request's later walks of the chain until the back-off its `Retry-After`
//! asked for is over (seconds; 1 s without one or for an HTTP-date, 60 s at most), so a
//! waiting request asks a throttled provider at most once per back-off. A back-off named in
//! seconds also goes into the deployment's shared health record (when some routing reads it,
//! [`crate::health`], and `fallback.share_retry_after` is on, the default), and holds back
//! every request the same way: routing puts the deployment after the others, a request's
//! walks skip it until the back-off is over, and a waiting request reads the record again
//! before each retry (so one queued before the 429 does not ask either). While a request waits,
//! [`Action::Wait`] asks the host to hold it and feed [`Event::Retry`] when capacity may have
//! freed, and at the latest at its `until_ms`. A retry walks the chain again; the request
//! leaves the queue when a deployment takes it, or is answered 429 `deployments_saturated`
//! with `Retry-After` once `max_wait_ms` has passed since it first waited (at once when the
//! queue is full or off).
//! A request that arrives while others of its model wait joins behind them without trying
//! the deployments, so it cannot take capacity a waiting request is due. The wait does not
//! count against `total_timeout_ms`; answers of a request that waited carry
//! `x-switchyard-queued-ms`.
//!
//! Every request that reached the gateway yields exactly one usage record, local 4xx
//! answers included.

use crate::attempts::{AttemptLog, Outcome, ATTEMPTS_HEADER};
use crate::canonical::TokenUsage;
use crate::config::FallbackPolicy;
use crate::error::{Dialect, ErrorKind, GatewayError};
use crate::gateway::{
    Endpoint, Gateway, HeadOutcome, LocalReply, Plan, RequestHead, UpstreamRequest,
};
use crate::health::{record_failure, record_success, HealthSnapshot, HealthStore};
use crate::limits::{admit, Admission, CounterStore, Estimate, Scope};
use crate::queue;
use crate::relay::UsageScanner;
use crate::stream::ResponseStream;
use crate::tasks::edge::Forward;
use crate::usage::UsageRecord;

/// Response header carrying the request id on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Status metered for a client that went away before it had the whole answer.
pub const CLIENT_CLOSED: u16 = 499;

/// Response header saying how long a request waited in the queue for capacity, ms.
pub const QUEUED_HEADER: &str = "x-switchyard-queued-ms";

/// What the host knows and owns for one step: the clock, entropy and the health store.
pub struct Ctx<'a> {
    /// Now, unix ms.
    pub now_ms: u64,
    /// Fresh entropy (seeds weighted routing and ids).
    pub random: u64,
    /// Where passive health lives on this host.
    pub health: &'a dyn HealthStore,
    /// Where rate-limit, concurrency and budget counters live on this host.
    pub counters: &'a dyn CounterStore,
}

/// Something that happened to the request.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// The client's request head (always first).
    RequestHead(RequestHead<'a>),
    /// The client's whole body, after [`Action::ReadBody`] (empty when it sent none).
    RequestBody(&'a [u8]),
    /// The body grew past [`Action::ReadBody`]'s limit.
    RequestBodyTooLarge,
    /// Reading the body failed; the detail goes to the log, never to the client.
    RequestBodyUnreadable(&'a str),
    /// The current attempt's response head.
    UpstreamHead(UpstreamHead<'a>),
    /// The current attempt's whole body, after [`Action::ReadUpstreamBody`].
    UpstreamBody(&'a [u8]),
    /// A chunk of a streamed answer, after [`Action::StartResponse`].
    UpstreamData(&'a [u8]),
    /// The end of a streamed answer.
    UpstreamEnd,
    /// The current attempt failed (before its head, or before its body was complete).
    UpstreamFailed(&'a Failure),
    /// The control plane's answer to [`Action::Admit`]: status and body, `None` when the call
    /// failed.
    AdmitAnswer(Option<(u16, &'a [u8])>),
    /// A request held by [`Action::Wait`] may try again: capacity may have freed, or its wait
    /// is up.
    Retry,
}

/// An attempt's response head, as the host received it.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpstreamHead<'a> {
    /// HTTP status (a host-made 503/504 for connection failures and timeouts counts too).
    pub status: u16,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `retry-after`.
    pub retry_after: Option<&'a str>,
    /// The host already holds the whole body (a buffered call): nothing can be streamed
    /// before it is complete, so it is judged whole.
    pub body_complete: bool,
}

/// Why an attempt failed without a usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer (or no next chunk) within the deadline.
    Timeout,
    /// The connection could not be made.
    ConnectionFailed,
    /// The connection broke before the answer was complete.
    Reset,
    /// The host could not send it; the detail is for the log.
    NotSent(String),
}

impl Failure {
    fn outcome(&self) -> Outcome {
        match self {
            Failure::Timeout => Outcome::Timeout,
            Failure::ConnectionFailed => Outcome::ConnectionFailed,
            Failure::Reset => Outcome::Reset,
            Failure::NotSent(why) => Outcome::NotSent(why.clone()),
        }
    }
}

/// What the host must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the request body (at most `limit` bytes) and feed [`Event::RequestBody`].
    ReadBody {
        /// The largest body accepted; more is [`Event::RequestBodyTooLarge`].
        limit: usize,
    },
    /// Answer the client with this complete response. It replaces anything held; nothing
    /// of an earlier attempt may reach the client any more.
    Reply(LocalReply),
    /// Send an attempt; its answer comes back as [`Event::UpstreamHead`] and the rest.
    Send(Box<Send>),
    /// Read the current attempt's whole body before anything reaches the client, then feed
    /// [`Event::UpstreamBody`].
    ReadUpstreamBody,
    /// Start the client's (streamed) response with this head.
    StartResponse(ResponseHead),
    /// Start the client's response with this head and let the current attempt's body pass
    /// to the client unchanged as it arrives (its length included); keep feeding each chunk
    /// as [`Event::UpstreamData`] (the core reads it, and answers no [`Action::Data`]) and
    /// the end as [`Event::UpstreamEnd`]. Given only for a routed attempt
    /// ([`Send::route`]) whose head came before its body (`body_complete: false`) and whose
    /// answer is the upstream's bytes (see [`crate::relay`]).
    RelayResponse(ResponseHead),
    /// Bytes for the client, in order.
    Data(Vec<u8>),
    /// The client's streamed response is complete.
    EndResponse,
    /// A line for the host's log (one write per line).
    Log(String),
    /// Ask the control plane to admit the request (limits and budgets shared by every edge
    /// instance): send this call and feed [`Event::AdmitAnswer`].
    Admit(Box<UpstreamRequest>),
    /// Every deployment is busy (see the module doc) and the request holds a place in `queue`:
    /// keep the client waiting and feed [`Event::Retry`] when capacity may have freed (wake a
    /// queue's requests oldest first), and no later than `until_ms` (unix ms). It can follow
    /// a sent attempt (a provider's 429, routed or not): that answer never reaches the
    /// client.
    Wait {
        /// The model's queue (requests of one queue compete for the same capacity).
        queue: String,
        /// When the wait is up.
        until_ms: u64,
    },
}

/// One attempt to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Send {
    /// Index into the plan's attempt chain (0 is the primary).
    pub attempt: usize,
    /// The request, in the deployment's native schema, credentials included.
    pub request: UpstreamRequest,
    /// Deadline for the answer's head, or for the whole answer when the host buffers it.
    pub timeout_ms: u64,
    /// Whether a successful answer may be streamed to the client as it arrives.
    pub stream: bool,
    /// Whether the host may forward this attempt as the client's own request through its
    /// router (Envoy's `cluster_header` route; the request head and body rewritten in
    /// place) instead of sending a call of its own and replying with its answer: cheaper by
    /// a second HTTP exchange and a local reply. A router hands the answer's head on before
    /// the body is complete, and a connection that breaks mid-body is then answered by the
    /// host itself (Envoy's router: its own error, no filter callback), so this is `true`
    /// only for a streamed answer (no switching after the first byte anyway) and, when the
    /// gateway opts in (`edge.route_complete_answers`, [`crate::config::EdgeOptions`]), for
    /// the chain's last attempt of a chat or embeddings request asked once (no fallback and
    /// no `n` emulation can follow it; media answers, which may be large, keep the call).
    /// Opting in trades the dialect's 502 for a complete answer cut mid-body for the host's
    /// own error (or, once a relayed answer's head went out, a body cut short; see
    /// [`Action::RelayResponse`]); by default every complete answer is a call.
    pub route: bool,
}

/// The head of a streamed response to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
}

/// How the host's part ended, for [`Exchange::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// The client went away (disconnected, reset) before the host was done.
    pub client_gone: bool,
    /// The status the client actually received, when the host knows it answered on its
    /// own (Envoy's router replies directly when an upstream resets under a held response).
    pub client_status: Option<u16>,
}

#[derive(Debug)]
enum State {
    /// Waiting for the request head.
    Head,
    /// Admitted; waiting for the body.
    Body(crate::gateway::Admitted),
    /// A task-plane request, admitted; waiting for its body.
    ForwardBody,
    /// Waiting for the control plane's admission; what follows when it is granted.
    Admitting(Granted),
    /// Waiting in the model's queue for a deployment with capacity.
    Queued,
    /// An attempt is in flight; nothing reached the client.
    Waiting,
    /// The current attempt's body is being read whole; nothing reached the client.
    ReadingBody {
        status: u16,
        retry_after: Option<String>,
        stream: bool,
    },
    /// The client's streamed response has started.
    Streaming,
    /// The current attempt's complete answer passes to the client as it arrives.
    Relaying,
    /// The client has its answer (or the exchange gave up on it).
    Answered,
}

/// What a request does once its key's and team's limits admit it.
#[derive(Debug)]
enum Granted {
    /// A planned request: walk its attempt chain.
    Attempts,
    /// A task-plane request: make its one call.
    Forward(Box<Send>),
}

/// One request through the gateway. See the module docs for the rules it follows.
pub struct Exchange {
    state: State,
    dialect: Dialect,
    request_id: String,
    started_ms: u64,
    key_id: String,
    team: Option<String>,
    plan: Option<Plan>,
    attempt: usize,
    attempt_started_ms: u64,
    attempts: AttemptLog,
    usage: TokenUsage,
    stream: Option<Box<dyn ResponseStream>>,
    /// The status line the client got (a reply's, or a stream's head).
    client_status: Option<u16>,
    first_byte_ms: Option<u64>,
    finished: bool,
    /// What the key's and team's limits granted this request, settled when it ends.
    admission: Option<Admission>,
    /// What the current attempt's deployment limits granted it.
    deployment_admission: Option<Admission>,
    /// `x-ratelimit-*` headers for every answer.
    ratelimit_headers: Vec<(String, String)>,
    /// The soonest a saturated deployment frees up, seconds (for `Retry-After`).
    saturated_retry_s: Option<u64>,
    /// Whether this walk found a deployment at its own limits (capacity that can free at any
    /// moment), not only providers' back-offs (which end at a known time).
    held_by_limits: bool,
    /// The soonest end (unix ms) of a provider's back-off this walk skipped a deployment for.
    back_off_ends_ms: Option<u64>,
    /// Attempts (by index in the plan) whose provider answered 429 to this request, and
    /// until when (unix ms, from its `Retry-After`) a walk of the chain skips them as busy.
    provider_busy: Vec<(usize, u64)>,
    /// The place held in the model's queue: since and until when (unix ms).
    queued: Option<(u64, u64)>,
    /// When the request's first wait in the queue ends, which bounds every later one.
    wait_deadline_ms: Option<u64>,
    /// How long the request waited in the queue, once it left it.
    queued_ms: Option<u64>,
    /// A request for the task plane (see [`crate::tasks::edge`]): one call, its answer
    /// passed through.
    forward: Option<crate::tasks::edge::Forward>,
    /// The one-choice answers collected so far when `n` is emulated by asking the
    /// deployment several times ([`Plan::fan_out`]), and their summed usage.
    fanned: Vec<Vec<u8>>,
    fanned_usage: TokenUsage,
    /// The current attempt's `content-type` (a speech answer's audio format passes through).
    upstream_content_type: Option<String>,
    /// What a media answer consumed beyond tokens (images, seconds of audio).
    media: crate::ingress::media::MediaUsage,
    /// The relayed answer's scanner, while it passes ([`Action::RelayResponse`]).
    relay: Option<UsageScanner>,
    /// The relayed answer did not arrive whole, or was not one JSON object.
    relay_failed: bool,
}

impl Default for Exchange {
    fn default() -> Self {
        Exchange::new()
    }
}

impl Exchange {
    /// A request that has not shown its head yet.
    pub fn new() -> Self {
        Exchange {
            state: State::Head,
            dialect: Dialect::OpenAi,
            request_id: String::new(),
            started_ms: 0,
            key_id: String::new(),
            team: None,
            plan: None,
            attempt: 0,
            attempt_started_ms: 0,
            attempts: AttemptLog::default(),
            usage: TokenUsage::default(),
            stream: None,
            client_status: None,
            first_byte_ms: None,
            finished: false,
            admission: None,
            deployment_admission: None,
            ratelimit_headers: Vec::new(),
            saturated_retry_s: None,
            held_by_limits: false,
            back_off_ends_ms: None,
            provider_busy: Vec::new(),
            queued: None,
            wait_deadline_ms: None,
            queued_ms: None,
            forward: None,
            fanned: Vec::new(),
            fanned_usage: TokenUsage::default(),
            upstream_content_type: None,
            media: Default::default(),
            relay: None,
            relay_failed: false,
        }
    }

    /// The request's id (set by its head).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The plan, once the body was accepted.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Whether a header of the upstream answer now being read must be kept from the client
    /// (see [`crate::config::ProviderConfig::strips_response_header`]); hosts that pass an
    /// upstream's headers through (proxy-wasm routing) ask this for each.
    pub fn strips_upstream_header(&self, name: &str) -> bool {
        self.plan
            .as_ref()
            .and_then(|p| p.attempts.get(self.attempt))
            .is_some_and(|a| a.settings.strips_response_header(name))
    }

    /// Whether the client's answer is complete (a reply, or a stream that reached its end).
    pub fn answered(&self) -> bool {
        matches!(self.state, State::Answered)
    }

    /// Whether the client's streamed (or relayed) response has started and is not over yet.
    pub fn streaming(&self) -> bool {
        matches!(self.state, State::Streaming | State::Relaying)
    }

    /// Whether the request waits in its model's queue (after [`Action::Wait`]).
    pub fn queued(&self) -> bool {
        matches!(self.state, State::Queued)
    }

    /// Feeds one event; returns what the host must do, in order.
    pub fn handle(&mut self, gateway: &Gateway, event: Event<'_>, cx: &Ctx<'_>) -> Vec<Action> {
        if self.finished {
            return Vec::new();
        }
        let state = std::mem::replace(&mut self.state, State::Answered);
        if let (State::Admitting(_), Event::AdmitAnswer(answer)) = (&state, event) {
            let State::Admitting(granted) = state else {
                unreachable!("matched above")
            };
            return self.on_admit_answer(answer, granted, cx);
        }
        if self.forward.is_some() {
            return self.handle_forward(gateway, state, event, cx);
        }
        match (state, event) {
            (State::Head, Event::RequestHead(head)) => self.on_head(gateway, &head, cx),
            (State::Body(admitted), Event::RequestBody(body)) => {
                self.on_body(gateway, &admitted, body, cx)
            }
            (State::Body(_), Event::RequestBodyTooLarge) => self.reply_error(&gateway.too_large()),
            (State::Queued, Event::Retry) => {
                // Attempts that were sent (a provider's 429) stay on the record.
                self.attempts.forget_saturated();
                self.saturated_retry_s = None;
                self.held_by_limits = false;
                self.back_off_ends_ms = None;
                self.note_shared_back_offs(cx);
                self.start_attempts(Vec::new(), cx)
            }
            (State::Body(_), Event::RequestBodyUnreadable(detail)) => self.body_unreadable(detail),
            (State::Waiting, Event::UpstreamHead(head)) => self.on_upstream_head(&head, cx),
            (
                State::ReadingBody {
                    status,
                    retry_after,
                    stream,
                },
                Event::UpstreamBody(body),
            ) => self.on_upstream_body(status, retry_after.as_deref(), stream, body, cx),
            (State::Streaming, Event::UpstreamData(chunk)) => {
                let mut actions = self.stream_bytes(|s| s.push(chunk), cx);
                if self.stream.as_ref().is_some_and(|s| s.failed()) {
                    // Malformed mid-stream: the error event is out; nothing more can follow.
                    actions.push(Action::EndResponse);
                } else {
                    self.state = State::Streaming;
                }
                actions
            }
            (State::Relaying, Event::UpstreamData(chunk)) => {
                self.first_byte_ms.get_or_insert(cx.now_ms);
                if let Some(scanner) = self.relay.as_mut() {
                    scanner.push(chunk);
                }
                self.state = State::Relaying;
                Vec::new()
            }
            (State::Relaying, Event::UpstreamEnd) => {
                let mut actions = Vec::new();
                if !self.relay.as_ref().is_some_and(UsageScanner::complete) {
                    self.relay_failed = true;
                    actions.push(Action::Log(format!(
                        "switchyard: request {}: the answer relayed from {} was not one JSON \
                         object",
                        self.request_id,
                        self.deployment()
                    )));
                }
                self.take_relayed_usage();
                actions.push(Action::EndResponse);
                actions
            }
            (State::Relaying, Event::UpstreamFailed(failure)) => {
                self.relay_failed = true;
                self.take_relayed_usage();
                vec![
                    Action::Log(format!(
                        "switchyard: request {}: the answer relayed from {} failed mid-body: {}",
                        self.request_id,
                        self.deployment(),
                        failure.outcome()
                    )),
                    Action::EndResponse,
                ]
            }
            (State::Streaming, Event::UpstreamEnd) => {
                let mut actions = self.stream_bytes(|s| s.finish(), cx);
                actions.push(Action::EndResponse);
                actions
            }
            (State::Waiting | State::ReadingBody { .. }, Event::UpstreamFailed(failure)) => {
                self.attempt_failed(failure.outcome(), cx)
            }
            (State::Streaming, Event::UpstreamFailed(failure)) => {
                let err = self.stream_failure(failure);
                let mut actions = vec![Action::Log(format!(
                    "switchyard: request {}: stream from {} failed: {}",
                    self.request_id,
                    self.deployment(),
                    failure.outcome()
                ))];
                actions.extend(self.stream_bytes(|s| s.fail(&err), cx));
                actions.push(Action::EndResponse);
                actions
            }
            // What an upstream still delivers after the answer is settled (a replaced or
            // failed attempt's rest) changes nothing.
            (
                State::Answered,
                Event::UpstreamHead(_)
                | Event::UpstreamData(_)
                | Event::UpstreamEnd
                | Event::UpstreamBody(_)
                | Event::UpstreamFailed(_),
            ) => Vec::new(),
            (state, event) => {
                // Out of order (a host bug): ignored, never a panic.
                self.state = state;
                vec![Action::Log(format!(
                    "switchyard: request {}: ignored {} in state {:?}",
                    self.request_id,
                    event_name(&event),
                    self.state
                ))]
            }
        }
    }

    /// Ends the exchange and returns its one usage record; later calls return `None`. What
    /// the request's limits granted is settled with what it really used.
    pub fn finish(&mut self, ending: Ending, cx: &Ctx<'_>) -> Option<UsageRecord> {
        if self.finished {
            return None;
        }
        self.finished = true;
        self.leave_queue(cx);
        let now_ms = cx.now_ms;
        let complete_stream = self.stream.as_ref().is_some_and(|s| s.complete());
        let failed_stream = self.stream.as_ref().is_some_and(|s| s.failed());
        self.take_relayed_usage();
        let status = match self.state {
            State::Answered if failed_stream || self.relay_failed => 502,
            State::Answered => self.client_status.unwrap_or(502),
            State::Streaming if complete_stream => self.client_status.unwrap_or(200),
            _ if ending.client_gone => CLIENT_CLOSED,
            State::Streaming | State::Relaying => 502,
            _ => ending.client_status.unwrap_or(502),
        };
        if let Some(stream) = &self.stream {
            self.usage.merge_max(stream.usage());
        }
        let tokens = self.usage.input + self.usage.output;
        let media = self.media;
        let media_cost = |price: &crate::config::Price| {
            crate::usage::media_cost(media.images, media.seconds, price)
        };
        let cost_nano = self.plan.as_ref().map_or(0, |plan| {
            let price = plan
                .attempts
                .get(self.attempt)
                .map(|a| a.price)
                .unwrap_or_default();
            crate::limits::usd_to_nano(crate::usage::cost(&self.usage, &price) + media_cost(&price))
        });
        if let Some(admission) = self.admission.take() {
            admission.settle(cx.counters, tokens, cost_nano, now_ms);
        }
        self.settle_deployment(tokens, cost_nano, cx);
        let latency_ms = now_ms.saturating_sub(self.started_ms);
        let ttft_ms = self
            .first_byte_ms
            .map(|t| t.saturating_sub(self.started_ms));
        Some(match &self.plan {
            Some(plan) => {
                let mut record = plan.usage_record(
                    self.attempt,
                    self.usage,
                    status,
                    self.attempts.count(),
                    Some(latency_ms),
                );
                record.request_id = self.request_id.clone();
                record.timestamp_ms = self.started_ms;
                record.team = self.team.clone();
                record.ttft_ms = ttft_ms;
                record.images = media.images;
                record.media_seconds = media.seconds;
                record.cost += record.price.as_ref().map_or(0.0, media_cost);
                record
            }
            None => UsageRecord {
                request_id: self.request_id.clone(),
                timestamp_ms: self.started_ms,
                key_id: self.key_id.clone(),
                team: self.team.clone(),
                model: self
                    .forward
                    .as_ref()
                    .and_then(|f| f.model.clone())
                    .unwrap_or_default(),
                provider: if self.forward.is_some() {
                    "task-plane".to_string()
                } else {
                    String::new()
                },
                deployment: String::new(),
                input_tokens: 0,
                cached_input_tokens: 0,
                output_tokens: 0,
                images: 0,
                media_seconds: 0.0,
                cost: 0.0,
                price: None,
                status,
                attempts: 0,
                stream: false,
                latency_ms: Some(latency_ms),
                ttft_ms: None,
            },
        })
    }

    fn on_head(&mut self, gateway: &Gateway, head: &RequestHead<'_>, cx: &Ctx<'_>) -> Vec<Action> {
        self.started_ms = cx.now_ms;
        self.request_id = match head.request_id {
            Some(id) if valid_request_id(id) => id.to_string(),
            _ => hex_id(u128::from(cx.random) << 64 | u128::from(!cx.random)),
        };
        let dialect = crate::gateway::request_dialect(head);
        if let Some(forward) = Forward::from_head(gateway, head, dialect, cx.now_ms / 1000) {
            self.dialect = dialect;
            return match forward {
                Ok(forward) => {
                    self.key_id = forward.key_id().to_string();
                    self.team = forward.team().map(str::to_string);
                    self.forward = Some(forward);
                    self.state = State::ForwardBody;
                    vec![Action::ReadBody {
                        limit: gateway.max_request_bytes(),
                    }]
                }
                Err(err) => self.reply_error(&err),
            };
        }
        match gateway.on_request_head(head, cx.now_ms / 1000) {
            HeadOutcome::Reply(reply) => {
                self.dialect = crate::gateway::request_dialect(head);
                self.reply(reply)
            }
            HeadOutcome::ReadBody(admitted) => {
                self.dialect = admitted.dialect;
                self.key_id = admitted.key_id.clone();
                self.team = admitted.team.clone();
                self.state = State::Body(admitted);
                vec![Action::ReadBody {
                    limit: gateway.max_request_bytes(),
                }]
            }
        }
    }

    /// The answer to a request body the host could not read: the fixed dialect 400, the
    /// host's detail only in the log.
    fn body_unreadable(&mut self, detail: &str) -> Vec<Action> {
        let mut actions = vec![Action::Log(format!(
            "switchyard: request {}: cannot read the request body: {detail}",
            self.request_id
        ))];
        actions
            .extend(self.reply_error(&GatewayError::invalid("the request body could not be read")));
        actions
    }

    /// The life of a task-plane request after its head: one call, its answer passed on.
    fn handle_forward(
        &mut self,
        gateway: &Gateway,
        state: State,
        event: Event<'_>,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let Some(forward) = self.forward.as_mut() else {
            return Vec::new();
        };
        match (state, event) {
            (State::ForwardBody, Event::RequestBody(body)) => {
                match forward.request(gateway, body, &self.request_id) {
                    // A submission is admitted exactly as a synchronous request is (the
                    // key's and team's scopes, shared through the control plane when there
                    // is one); its tokens and cost are the task plane's to meter, so its
                    // estimate is one request and nothing more.
                    Ok(request) => self.admit_then(
                        gateway,
                        Granted::Forward(Box::new(Send {
                            attempt: 0,
                            timeout_ms: request.timeout_ms,
                            request,
                            stream: false,
                            // Kept a call: the core reads its answer whole and relays it.
                            route: false,
                        })),
                        cx,
                    ),
                    Err(err) => self.reply_error(&err),
                }
            }
            (State::ForwardBody, Event::RequestBodyTooLarge) => {
                self.reply_error(&gateway.too_large())
            }
            (State::ForwardBody, Event::RequestBodyUnreadable(detail)) => {
                self.body_unreadable(detail)
            }
            (State::Waiting, Event::UpstreamHead(head)) => {
                forward.answer_head(head.content_type);
                self.state = State::ReadingBody {
                    status: head.status,
                    retry_after: None,
                    stream: false,
                };
                vec![Action::ReadUpstreamBody]
            }
            (State::ReadingBody { status, .. }, Event::UpstreamBody(body)) => {
                let reply = forward.answer(status, body);
                self.reply(reply)
            }
            (State::Waiting | State::ReadingBody { .. }, Event::UpstreamFailed(failure)) => {
                let err = forward.failure(failure);
                let mut actions = vec![Action::Log(format!(
                    "switchyard: request {}: the task plane call failed: {}",
                    self.request_id,
                    failure.outcome()
                ))];
                actions.extend(self.reply_error(&err));
                actions
            }
            (State::Answered, _) => Vec::new(),
            (state, event) => {
                self.state = state;
                vec![Action::Log(format!(
                    "switchyard: request {}: ignored {} in state {:?}",
                    self.request_id,
                    event_name(&event),
                    self.state
                ))]
            }
        }
    }

    fn on_body(
        &mut self,
        gateway: &Gateway,
        admitted: &crate::gateway::Admitted,
        body: &[u8],
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        if body.is_empty() {
            return self.reply_error(&GatewayError::invalid("request body is required"));
        }
        // A media request naming a model of asynchronous providers: the task plane runs it
        // and answers for the endpoint (the synchronous facade).
        if let Some(forward) =
            Forward::facade(gateway, admitted, body, (&self.request_id, cx.random))
        {
            return match forward {
                Ok(forward) => {
                    self.forward = Some(forward);
                    self.handle_forward(gateway, State::ForwardBody, Event::RequestBody(body), cx)
                }
                Err(err) => self.reply_error(&err),
            };
        }
        let health = HealthSnapshot {
            store: cx.health,
            now_ms: cx.now_ms,
        };
        let plan = match gateway.plan(admitted, body, cx.random, cx.now_ms / 1000, &health) {
            Ok(plan) => plan,
            Err(err) => return self.reply_error(&err),
        };
        // Deployments whose provider asked every caller to back off are not asked before then.
        for &(attempt, until_ms) in &plan.backing_off {
            self.hold_back(attempt, until_ms);
        }
        self.plan = Some(plan);
        self.admit_then(gateway, Granted::Attempts, cx)
    }

    /// The limits a request counts against and its estimate: a plan's, or for a task-plane
    /// submission its key's and team's scopes with a zero estimate (one request, no tokens,
    /// no cost); a task-plane read has no scopes.
    fn admission_inputs(&self) -> (&[Scope], Estimate) {
        match (&self.plan, &self.forward) {
            (Some(plan), _) => (&plan.scopes, plan.estimate),
            (None, Some(forward)) => (&forward.scopes, Estimate::default()),
            (None, None) => (&[], Estimate::default()),
        }
    }

    /// Admits the request against the key's and team's limits, then does what `granted`
    /// says. With a control plane (and its token) the limits are shared by every edge
    /// instance: the request waits for [`Action::Admit`]'s answer. Otherwise this host's own
    /// counters decide. The one admission path for planned and task-plane requests alike.
    fn admit_then(&mut self, gateway: &Gateway, granted: Granted, cx: &Ctx<'_>) -> Vec<Action> {
        let (scopes, estimate) = self.admission_inputs();
        if !scopes.is_empty() {
            if let Some((cfg, Some(token))) = gateway.control_plane() {
                let request = cfg.admit_request(
                    token,
                    &crate::control::AdmitRequest {
                        request_id: self.request_id.clone(),
                        scopes: scopes.to_vec(),
                        estimate,
                    },
                );
                self.state = State::Admitting(granted);
                return vec![Action::Admit(Box::new(request))];
            }
        }
        self.admit_locally(Vec::new(), granted, cx)
    }

    /// Admits the request against this host's own counters, then does what `granted` says.
    fn admit_locally(
        &mut self,
        mut actions: Vec<Action>,
        granted: Granted,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let outcome = {
            let (scopes, estimate) = self.admission_inputs();
            admit(cx.counters, scopes, estimate, cx.now_ms)
        };
        match outcome {
            Ok(admission) => {
                self.ratelimit_headers = admission.headers.clone();
                self.admission = Some(admission);
                self.granted(actions, granted, cx)
            }
            Err(refusal) => {
                self.ratelimit_headers = refusal.headers;
                actions.extend(self.reply_error(&refusal.error));
                actions
            }
        }
    }

    /// The request is admitted: send its first attempt, or its call to the task plane.
    fn granted(&mut self, mut actions: Vec<Action>, granted: Granted, cx: &Ctx<'_>) -> Vec<Action> {
        match granted {
            Granted::Attempts => self.start_attempts(actions, cx),
            Granted::Forward(send) => {
                self.state = State::Waiting;
                actions.push(Action::Send(send));
                actions
            }
        }
    }

    fn start_attempts(&mut self, actions: Vec<Action>, cx: &Ctx<'_>) -> Vec<Action> {
        self.attempt = 0;
        self.attempt_started_ms = cx.now_ms;
        if self.queued.is_none() && self.others_wait(cx) {
            // Capacity that frees while others wait is theirs: join behind them.
            return self.saturated(actions, cx);
        }
        self.send_or_next(actions, cx)
    }

    /// Whether requests of this model wait in its queue now.
    fn others_wait(&self, cx: &Ctx<'_>) -> bool {
        self.plan.as_ref().is_some_and(|plan| {
            plan.queue.enabled()
                && plan.attempts.iter().any(|a| a.limits.is_some())
                && queue::depth(cx.counters, &plan.model) > 0
        })
    }

    /// Every deployment is busy: wait in the model's queue while the policy allows (all of a
    /// request's waits within one `max_wait_ms`), else answer 429 with `Retry-After`.
    fn saturated(&mut self, mut actions: Vec<Action>, cx: &Ctx<'_>) -> Vec<Action> {
        let Some(plan) = &self.plan else {
            return self.reply_error(&no_plan());
        };
        let (model, policy) = (plan.model.clone(), plan.queue);
        let public = plan.public_model.clone();
        // Only providers' back-offs hold the request, and the soonest ends after its wait
        // would: waiting cannot help, the client hears when to come back at once.
        let wait_ends_ms = self
            .wait_deadline_ms
            .unwrap_or(cx.now_ms.saturating_add(policy.max_wait_ms));
        let backed_off_past_wait =
            !self.held_by_limits && self.back_off_ends_ms.is_some_and(|t| t > wait_ends_ms);
        if backed_off_past_wait && policy.enabled() {
            let waited = self.leave_queue(cx);
            let seconds = self.saturated_retry_s.unwrap_or(1);
            let waited = waited.map_or(String::new(), |ms| format!(" (it waited {ms} ms)"));
            let mut err = GatewayError::new(
                ErrorKind::RateLimited,
                format!(
                    "every deployment of `{public}` is held back by its provider's Retry-After \
                     for longer than this request may wait{waited}; retry in {seconds} s"
                ),
            )
            .with_code("deployments_saturated");
            err.retry_after = Some(seconds);
            actions.extend(self.reply_error(&err));
            return actions;
        }
        let mut full = false;
        if self.queued.is_none() && policy.enabled() {
            if queue::enter(cx.counters, &model, policy.max_depth) {
                // `max_wait_ms` bounds all of a request's waits together.
                let until_ms = *self
                    .wait_deadline_ms
                    .get_or_insert(cx.now_ms.saturating_add(policy.max_wait_ms));
                self.queued = Some((cx.now_ms, until_ms));
            } else {
                full = true;
            }
        }
        if let Some((_, until_ms)) = self.queued {
            if cx.now_ms < until_ms {
                self.state = State::Queued;
                actions.push(Action::Wait {
                    queue: model,
                    until_ms,
                });
                return actions;
            }
        }
        let waited = self.leave_queue(cx);
        let message = match waited {
            Some(ms) => format!(
                "every deployment of `{public}` stayed at its limit for the {ms} ms this request \
                 waited; retry shortly"
            ),
            None if full => format!(
                "every deployment of `{public}` is at its limit and {} requests already wait; \
                 retry shortly",
                policy.max_depth
            ),
            None => format!("every deployment of `{public}` is at its limit; retry shortly"),
        };
        let mut err =
            GatewayError::new(ErrorKind::RateLimited, message).with_code("deployments_saturated");
        err.retry_after = Some(self.saturated_retry_s.unwrap_or(1));
        actions.extend(self.reply_error(&err));
        actions
    }

    /// Gives the request's place in its queue back; how long it waited, if it had one.
    fn leave_queue(&mut self, cx: &Ctx<'_>) -> Option<u64> {
        let (since_ms, _) = self.queued.take()?;
        if let Some(plan) = &self.plan {
            queue::leave(cx.counters, &plan.model);
        }
        // A request can wait more than once (a provider's 429 after it left the queue): every
        // wait counts, and none against `total_timeout_ms`.
        let waited = self.queued_ms.unwrap_or(0) + cx.now_ms.saturating_sub(since_ms);
        self.queued_ms = Some(waited);
        Some(waited)
    }

    /// Time spent on the attempt chain so far (waits in the queue not included: those that
    /// ended, and the one a retry walks the chain from).
    fn chain_elapsed_ms(&self, cx: &Ctx<'_>) -> u64 {
        let waiting_ms = self
            .queued
            .map_or(0, |(since_ms, _)| cx.now_ms.saturating_sub(since_ms));
        cx.now_ms
            .saturating_sub(self.started_ms)
            .saturating_sub(self.queued_ms.unwrap_or(0))
            .saturating_sub(waiting_ms)
    }

    /// The control plane admitted the request (its reservation settles when the usage record
    /// reaches the ledger), refused it, or could not be asked: then this host's own counters
    /// decide, so an outage degrades limits to per-instance ones instead of refusing traffic.
    fn on_admit_answer(
        &mut self,
        answer: Option<(u16, &[u8])>,
        granted: Granted,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let parsed = answer.and_then(|(status, body)| {
            let answer: crate::control::AdmitAnswer = serde_json::from_slice(body).ok()?;
            matches!(status, 200 | 429).then_some(answer)
        });
        match parsed {
            Some(answer) => {
                self.ratelimit_headers = answer.headers;
                match answer.refusal {
                    Some(refusal) => self.reply_error(&refusal.error()),
                    None => self.granted(Vec::new(), granted, cx),
                }
            }
            None => {
                let why = answer.map_or("no answer".to_string(), |(s, _)| format!("HTTP {s}"));
                let log = Action::Log(format!(
                    "switchyard: request {}: the control plane could not admit it ({why}); \
                     this instance's own limits apply",
                    self.request_id
                ));
                self.admit_locally(vec![log], granted, cx)
            }
        }
    }

    /// Sends the current attempt, or the next one that can go — a deployment at its own
    /// limits is skipped (not counted against its health), one whose request cannot be built
    /// is logged — and answers when none is left.
    fn send_or_next(&mut self, mut actions: Vec<Action>, cx: &Ctx<'_>) -> Vec<Action> {
        loop {
            if self.take_deployment(cx) {
                self.leave_queue(cx);
                match self.send_current(cx) {
                    Ok(send) => {
                        self.state = State::Waiting;
                        actions.push(Action::Send(Box::new(send)));
                        return actions;
                    }
                    // The primary's request cannot be built (e.g. content the provider cannot
                    // take): that is the answer, not a reason to try elsewhere.
                    Err(err) if self.attempt == 0 => {
                        self.settle_deployment(0, 0, cx);
                        actions.extend(self.reply_error(&err));
                        return actions;
                    }
                    Err(err) => {
                        self.settle_deployment(0, 0, cx);
                        actions.push(Action::Log(format!(
                            "switchyard: request {}: attempt {} to {} not sent: {}",
                            self.request_id,
                            self.attempt,
                            self.deployment(),
                            err.message
                        )));
                        self.log_attempt(Outcome::NotSent(err.message), cx);
                    }
                }
            } else {
                self.log_attempt(Outcome::Saturated, cx);
            }
            if !self.can_fall_back(cx) {
                break;
            }
            self.attempt += 1;
            self.attempt_started_ms = cx.now_ms;
        }
        if self.every_deployment_busy() {
            return self.saturated(actions, cx);
        }
        let err = self.attempts.all_failed();
        actions.extend(self.reply_error(&err));
        actions
    }

    /// Takes the current deployment's own limits; `false` when it is at one, or when its
    /// provider answered this request 429 and the back-off it asked for is not over.
    fn take_deployment(&mut self, cx: &Ctx<'_>) -> bool {
        let busy_until = self
            .provider_busy
            .iter()
            .find(|(attempt, _)| *attempt == self.attempt)
            .map(|(_, until_ms)| *until_ms);
        if let Some(until_ms) = busy_until.filter(|until_ms| cx.now_ms < *until_ms) {
            self.note_back_off(until_ms, cx);
            return false;
        }
        let Some(plan) = &self.plan else { return true };
        let Some(attempt) = plan.attempts.get(self.attempt) else {
            return true;
        };
        let Some(limits) = &attempt.limits else {
            return true;
        };
        let scope = Scope::deployment(&attempt.deployment_id, limits);
        match admit(cx.counters, &[scope], plan.estimate, cx.now_ms) {
            Ok(admission) => {
                self.deployment_admission = Some(admission);
                true
            }
            Err(refusal) => {
                self.held_by_limits = true;
                self.note_saturated_for(refusal.error.retry_after.unwrap_or(1));
                false
            }
        }
    }

    /// A deployment is held back by its provider's back-off until `until_ms`.
    fn note_back_off(&mut self, until_ms: u64, cx: &Ctx<'_>) {
        self.back_off_ends_ms = Some(self.back_off_ends_ms.map_or(until_ms, |t| t.min(until_ms)));
        self.note_saturated_for(until_ms.saturating_sub(cx.now_ms).div_ceil(1_000));
    }

    /// A deployment is busy for `seconds` more: the soonest of these is the `Retry-After`
    /// of a `deployments_saturated` answer.
    fn note_saturated_for(&mut self, seconds: u64) {
        let seconds = seconds.max(1);
        self.saturated_retry_s = Some(self.saturated_retry_s.map_or(seconds, |w| w.min(seconds)));
    }

    /// Whether every deployment tried is busy — at its own limits, or its provider answered
    /// this request 429 — and at least one was found busy without being asked (at its
    /// limits, or skipped in its provider's back-off): then the request waits like one that
    /// found every deployment at its limits. A chain of provider 429s alone is the providers'
    /// answer, passed on with their back-off.
    fn every_deployment_busy(&self) -> bool {
        let records = self.attempts.records();
        records.iter().any(|r| r.outcome == Outcome::Saturated)
            && records
                .iter()
                .all(|r| matches!(r.outcome, Outcome::Saturated | Outcome::Status(429)))
    }

    /// Settles what the current attempt's deployment limits granted.
    fn settle_deployment(&mut self, tokens: u64, cost_nano: i64, cx: &Ctx<'_>) {
        if let Some(admission) = self.deployment_admission.take() {
            admission.settle(cx.counters, tokens, cost_nano, cx.now_ms);
        }
    }

    /// The [`Send`] for the current attempt.
    fn send_current(&self, cx: &Ctx<'_>) -> Result<Send, GatewayError> {
        let plan = self.plan.as_ref().ok_or_else(no_plan)?;
        let request = plan.upstream_request(self.attempt)?;
        let elapsed = self.chain_elapsed_ms(cx);
        let remaining = plan.fallback.total_timeout_ms.saturating_sub(elapsed);
        Ok(Send {
            attempt: self.attempt,
            timeout_ms: request.timeout_ms.min(remaining).max(1),
            request,
            stream: plan.stream,
            route: plan.stream || (plan.route_complete_answers && self.last_of_chain(plan)),
        })
    }

    /// Whether the current attempt is the last one the chain can make for a request whose
    /// answer is small JSON (chat, embeddings), asked once: nothing can follow it, so a
    /// router may carry it where the gateway opts in (see [`Send::route`]).
    fn last_of_chain(&self, plan: &Plan) -> bool {
        self.attempt + 1 >= plan.attempts.len()
            && plan.fan_out(self.attempt) <= 1
            && !matches!(plan.endpoint, Endpoint::Media(_) | Endpoint::Models)
    }

    /// Whether the current attempt's successful complete answer is relayed as it arrives
    /// instead of held whole: only where the gateway routes complete answers
    /// (`edge.route_complete_answers`) and only for the chain's last attempt (nothing can
    /// replace its answer once bytes went out; fallback attempts keep being held and
    /// judged), and only when the answer is the upstream's bytes unchanged.
    fn relays(&self, plan: &Plan) -> bool {
        plan.route_complete_answers
            && self.last_of_chain(plan)
            && plan.answer_passes_through(self.attempt)
    }

    /// Meters what the relayed answer's scanner found: its `usage` (none found: no tokens,
    /// as for an answer held whole without one), with the choices of an `n` emulated
    /// before a fallback.
    fn take_relayed_usage(&mut self) {
        let Some(scanner) = self.relay.take() else {
            return;
        };
        let usage = match (scanner.usage(), &self.plan) {
            (Some(raw), Some(plan)) => plan.passed_through_usage(self.attempt, raw),
            _ => TokenUsage::default(),
        };
        self.usage = summed(self.fanned_usage, usage);
    }

    fn can_fall_back(&self, cx: &Ctx<'_>) -> bool {
        let Some(plan) = &self.plan else { return false };
        let elapsed = self.chain_elapsed_ms(cx);
        self.attempt + 1 < plan.attempts.len() && elapsed < plan.fallback.total_timeout_ms
    }

    fn deployment(&self) -> &str {
        self.plan
            .as_ref()
            .and_then(|p| p.attempts.get(self.attempt))
            .map_or("", |a| a.deployment_id.as_str())
    }

    /// Whether the current attempt's deployment keeps a health record (see
    /// [`crate::gateway::Attempt::health_read`]).
    fn health_read(&self) -> bool {
        self.plan
            .as_ref()
            .and_then(|p| p.attempts.get(self.attempt))
            .is_some_and(|a| a.health_read)
    }

    fn log_attempt(&mut self, outcome: Outcome, cx: &Ctx<'_>) {
        let millis = cx.now_ms.saturating_sub(self.attempt_started_ms);
        let deployment = self.deployment().to_string();
        self.attempts.push(deployment, outcome, millis);
    }

    /// The current attempt failed: count it against the deployment, then move on to the next
    /// one, or answer with the all-failed error.
    fn attempt_failed(&mut self, outcome: Outcome, cx: &Ctx<'_>) -> Vec<Action> {
        self.attempt_failed_backing_off(outcome, None, cx)
    }

    /// [`Exchange::attempt_failed`], for an attempt whose provider asked every caller to back
    /// off until `back_off_until_ms` (a 429 with `Retry-After`): the deployment's shared
    /// record skips it that long, so other requests go down the chain instead of asking again.
    fn attempt_failed_backing_off(
        &mut self,
        outcome: Outcome,
        back_off_until_ms: Option<u64>,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        // An attempt that was never sent is not the deployment's fault.
        if !matches!(outcome, Outcome::NotSent(_)) {
            actions.extend(self.count_failure(back_off_until_ms, cx));
        }
        if !matches!(outcome, Outcome::Status(_)) {
            actions.push(Action::Log(format!(
                "switchyard: request {}: attempt {} to {} failed: {outcome}",
                self.request_id,
                self.attempt,
                self.deployment()
            )));
        }
        self.log_attempt(outcome, cx);
        self.settle_deployment(0, 0, cx);
        if !self.can_fall_back(cx) {
            if self.every_deployment_busy() {
                return self.saturated(actions, cx);
            }
            let mut err = self.attempts.all_failed();
            if err.retry_after.is_some() {
                // The last provider's 429: the client waits the back-off the providers asked.
                err.retry_after = self.saturated_retry_s.or(err.retry_after);
            }
            actions.extend(self.reply_error(&err));
            return actions;
        }
        self.attempt += 1;
        self.attempt_started_ms = cx.now_ms;
        self.send_or_next(actions, cx)
    }

    /// Counts a failed attempt against its deployment's shared health record, when some
    /// routing reads it; a log line for an ejection or a back-off that started or grew.
    fn count_failure(&self, back_off_until_ms: Option<u64>, cx: &Ctx<'_>) -> Vec<Action> {
        let Some(plan) = self.plan.as_ref().filter(|_| self.health_read()) else {
            return Vec::new();
        };
        let deployment = self.deployment();
        let recorded = record_failure(
            cx.health,
            deployment,
            &plan.fallback,
            cx.now_ms,
            back_off_until_ms,
        );
        let for_ms = |until_ms: u64| until_ms.saturating_sub(cx.now_ms);
        let ejected = recorded.ejected_until_ms.map(|until_ms| {
            Action::Log(format!(
                "switchyard: ejecting deployment {deployment} for {} ms",
                for_ms(until_ms)
            ))
        });
        let backing_off = recorded.backed_off_until_ms.map(|until_ms| {
            Action::Log(format!(
                "switchyard: deployment {deployment} backs off for {} ms (its provider's \
                 Retry-After)",
                for_ms(until_ms)
            ))
        });
        ejected.into_iter().chain(backing_off).collect()
    }

    /// Before a waiting request walks its chain again: the back-offs other requests recorded
    /// meanwhile (a provider's 429 with `Retry-After`) hold it back too.
    fn note_shared_back_offs(&mut self, cx: &Ctx<'_>) {
        let Some(plan) = self.plan.as_ref().filter(|p| p.fallback.share_retry_after) else {
            return;
        };
        let mut held = Vec::new();
        for (attempt, deployment) in plan.attempts.iter().enumerate() {
            if !deployment.health_read {
                continue;
            }
            let Some(record) = cx.health.load(&deployment.deployment_id) else {
                continue;
            };
            if record.backed_off_until_ms > cx.now_ms {
                held.push((attempt, record.backed_off_until_ms));
            }
        }
        for (attempt, until_ms) in held {
            self.hold_back(attempt, until_ms);
        }
    }

    /// This request asks `attempt`'s deployment no sooner than `until_ms` (the later of what
    /// it already knew and this).
    fn hold_back(&mut self, attempt: usize, until_ms: u64) {
        match self.provider_busy.iter_mut().find(|(a, _)| *a == attempt) {
            Some((_, known_ms)) => *known_ms = (*known_ms).max(until_ms),
            None => self.provider_busy.push((attempt, until_ms)),
        }
    }

    fn on_upstream_head(&mut self, head: &UpstreamHead<'_>, cx: &Ctx<'_>) -> Vec<Action> {
        let Some(plan) = &self.plan else {
            return self.reply_error(&no_plan());
        };
        let status = head.status;
        if plan.should_retry_status(status) && (self.attempt > 0 || self.can_fall_back(cx)) {
            let shared_back_off = (status == 429)
                .then(|| shared_back_off_until(&plan.fallback, head.retry_after, cx.now_ms))
                .flatten();
            if status == 429 {
                // This request skips the provider for its back-off (an HTTP-date, or none:
                // one second); every request does when the provider named it in seconds
                // (`fallback.share_retry_after`).
                let back_off_s = provider_back_off_s(head.retry_after).unwrap_or(1);
                let until_ms = cx.now_ms.saturating_add(back_off_s * 1_000);
                self.hold_back(self.attempt, until_ms);
                self.note_back_off(until_ms, cx);
            }
            return self.attempt_failed_backing_off(Outcome::Status(status), shared_back_off, cx);
        }
        let success = (200..300).contains(&status);
        let kind = plan.attempts.get(self.attempt).map(|a| a.kind);
        let event_stream = head
            .content_type
            .zip(kind)
            .is_some_and(|(ct, kind)| kind.is_stream_content_type(ct));
        let stream = plan.stream && success && event_stream;
        if stream && !head.body_complete {
            let translator = plan.response_stream(self.attempt);
            self.succeeded(status, cx);
            let mut headers = vec![
                ("content-type".to_string(), "text/event-stream".to_string()),
                ("cache-control".to_string(), "no-cache".to_string()),
            ];
            self.add_answer_headers(&mut headers);
            self.stream = Some(translator);
            self.client_status = Some(status);
            self.state = State::Streaming;
            return vec![Action::StartResponse(ResponseHead { status, headers })];
        }
        if success && !head.body_complete && self.relays(plan) {
            // The upstream's bytes are the client's answer: they pass as they arrive, and
            // the usage is found on the way (see `Action::RelayResponse`).
            let content_type = plan.response_content_type();
            self.succeeded(status, cx);
            let mut headers = vec![("content-type".to_string(), content_type.to_string())];
            self.add_answer_headers(&mut headers);
            self.relay = Some(UsageScanner::new());
            self.client_status = Some(status);
            self.state = State::Relaying;
            return vec![Action::RelayResponse(ResponseHead { status, headers })];
        }
        self.upstream_content_type = head.content_type.map(str::to_string);
        self.state = State::ReadingBody {
            status,
            retry_after: head.retry_after.map(str::to_string),
            stream,
        };
        vec![Action::ReadUpstreamBody]
    }

    fn on_upstream_body(
        &mut self,
        status: u16,
        retry_after: Option<&str>,
        stream: bool,
        body: &[u8],
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let Some(plan) = &self.plan else {
            return self.reply_error(&no_plan());
        };
        if !(200..300).contains(&status) {
            // A final error (or the retryable error of the only attempt the chain can make):
            // the provider's own error is the answer.
            let mut actions = Vec::new();
            if plan.should_retry_status(status) {
                let back_off = (status == 429)
                    .then(|| shared_back_off_until(&plan.fallback, retry_after, cx.now_ms))
                    .flatten();
                actions.extend(self.count_failure(back_off, cx));
            }
            let mut err = plan.translate_error(self.attempt, status, body);
            // The provider's back-off hint reaches the client unless the translated error
            // carries one.
            if err.retry_after.is_none() {
                err.retry_after = retry_after.and_then(|v| v.trim().parse().ok());
            }
            self.log_attempt(Outcome::Status(status), cx);
            actions.extend(self.reply_error(&err));
            return actions;
        }
        let translated = if stream {
            let mut translator = plan.response_stream(self.attempt);
            let mut out = translator.push(body);
            out.extend(translator.finish());
            if translator.failed() {
                Err(GatewayError::new(
                    ErrorKind::BadGateway,
                    "the event stream was cut short or malformed",
                ))
            } else {
                Ok((out, translator.usage(), "text/event-stream".to_string()))
            }
        } else {
            let content_type = plan.answer_content_type(self.upstream_content_type.as_deref());
            if let Some(media) = plan.media_usage(body) {
                self.media = media;
            }
            plan.translate_response(self.attempt, body)
                .map(|(out, usage)| (out, usage, content_type))
        };
        let fan_out = plan.fan_out(self.attempt) as usize;
        match translated {
            Ok((out, usage, _)) if fan_out > 1 => {
                // `n` emulated: one choice per request, asked again until there are `n`.
                self.succeeded(status, cx);
                self.fanned_usage = summed(self.fanned_usage, usage);
                self.fanned.push(out);
                if self.fanned.len() < fan_out {
                    self.settle_deployment(usage.input + usage.output, 0, cx);
                    self.attempt_started_ms = cx.now_ms;
                    return self.send_or_next(Vec::new(), cx);
                }
                self.usage = self.fanned_usage;
                let body = crate::ingress::openai::merge_choices(&self.fanned, &self.usage);
                self.reply(LocalReply {
                    status,
                    headers: vec![("content-type".to_string(), "application/json".to_string())],
                    body,
                })
            }
            Ok((out, usage, content_type)) => {
                self.succeeded(status, cx);
                // Choices asked for before a fallback to a deployment that answers `n` itself
                // were still paid for.
                self.usage = summed(self.fanned_usage, usage);
                let mut headers = vec![("content-type".to_string(), content_type.to_string())];
                if stream {
                    headers.push(("cache-control".to_string(), "no-cache".to_string()));
                }
                self.reply(LocalReply {
                    status,
                    headers,
                    body: out,
                })
            }
            // A 2xx that cannot be read is the deployment's failure, like a 5xx.
            Err(err) => {
                let mut actions = vec![Action::Log(format!(
                    "switchyard: request {}: unreadable answer from {}: {}",
                    self.request_id,
                    self.deployment(),
                    err.message
                ))];
                actions.extend(self.attempt_failed(Outcome::Malformed, cx));
                actions
            }
        }
    }

    fn succeeded(&mut self, status: u16, cx: &Ctx<'_>) {
        if self.health_read() {
            let latency = cx.now_ms.saturating_sub(self.attempt_started_ms);
            record_success(cx.health, self.deployment(), latency, cx.now_ms);
        }
        self.log_attempt(Outcome::Status(status), cx);
    }

    fn stream_bytes(
        &mut self,
        step: impl FnOnce(&mut dyn ResponseStream) -> Vec<u8>,
        cx: &Ctx<'_>,
    ) -> Vec<Action> {
        let Some(stream) = self.stream.as_mut() else {
            return Vec::new();
        };
        let bytes = step(stream.as_mut());
        if bytes.is_empty() {
            return Vec::new();
        }
        self.first_byte_ms.get_or_insert(cx.now_ms);
        vec![Action::Data(bytes)]
    }

    fn stream_failure(&self, failure: &Failure) -> GatewayError {
        match failure {
            Failure::Timeout => GatewayError::new(
                ErrorKind::Timeout,
                format!("upstream {} stalled mid-stream", self.deployment()),
            ),
            other => GatewayError::new(
                ErrorKind::BadGateway,
                format!(
                    "upstream {} failed mid-stream: {}",
                    self.deployment(),
                    other.outcome()
                ),
            ),
        }
    }

    fn add_answer_headers(&self, headers: &mut Vec<(String, String)>) {
        headers.extend(self.ratelimit_headers.iter().cloned());
        if let Some(ms) = self.queued_ms {
            headers.push((QUEUED_HEADER.to_string(), ms.to_string()));
        }
        let attempts = self.attempts.header_value();
        if !attempts.is_empty() {
            headers.push((ATTEMPTS_HEADER.to_string(), attempts));
        }
        headers.push((REQUEST_ID_HEADER.to_string(), self.request_id.clone()));
    }

    fn reply(&mut self, mut reply: LocalReply) -> Vec<Action> {
        self.add_answer_headers(&mut reply.headers);
        self.client_status = Some(reply.status);
        self.state = State::Answered;
        vec![Action::Reply(reply)]
    }

    fn reply_error(&mut self, err: &GatewayError) -> Vec<Action> {
        let reply = LocalReply::error(err, self.dialect);
        self.reply(reply)
    }
}

/// A request id from the client or the proxy is kept if it is a sane token.
/// Two answers' usage together.
fn summed(a: TokenUsage, b: TokenUsage) -> TokenUsage {
    TokenUsage {
        input: a.input + b.input,
        output: a.output + b.output,
        cached_input: a.cached_input + b.cached_input,
        reasoning: a.reasoning + b.reasoning,
    }
}

fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// The back-off a provider's `Retry-After` names in seconds (1 to 60); `None` for none or an
/// HTTP-date.
fn provider_back_off_s(retry_after: Option<&str>) -> Option<u64> {
    retry_after
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| s.clamp(1, 60))
}

/// Until when (unix ms) a provider's 429 holds its deployment back for every request: its
/// `Retry-After` in seconds from `now_ms`, when `policy` shares it.
fn shared_back_off_until(
    policy: &FallbackPolicy,
    retry_after: Option<&str>,
    now_ms: u64,
) -> Option<u64> {
    let seconds = provider_back_off_s(retry_after).filter(|_| policy.share_retry_after)?;
    Some(now_ms.saturating_add(seconds * 1_000))
}

fn no_plan() -> GatewayError {
    GatewayError::new(ErrorKind::Internal, "no plan for this request")
}

fn event_name(event: &Event<'_>) -> &'static str {
    match event {
        Event::RequestHead(_) => "request head",
        Event::RequestBody(_) => "request body",
        Event::RequestBodyTooLarge => "body too large",
        Event::RequestBodyUnreadable(_) => "unreadable body",
        Event::UpstreamHead(_) => "upstream head",
        Event::UpstreamBody(_) => "upstream body",
        Event::UpstreamData(_) => "upstream data",
        Event::UpstreamEnd => "upstream end",
        Event::UpstreamFailed(_) => "upstream failure",
        Event::AdmitAnswer(_) => "admission answer",
        Event::Retry => "retry",
    }
}

/// `id` as 32 lower-case hex digits: a request id made here (what `format!("{id:032x}")`
/// writes, without the formatting machinery: about a tenth of its instructions).
fn hex_id(id: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..32)
        .rev()
        .map(|i| char::from(DIGITS[((id >> (4 * i)) & 0xf) as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn made_request_ids_are_32_hex_digits() {
        for id in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(super::hex_id(id), format!("{id:032x}"));
        }
    }
}
