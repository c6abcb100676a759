//! One HTTP stream: proxy-wasm callbacks mapped to the core exchange's events, and its
//! actions performed with proxy-wasm calls. See the crate docs for how attempts travel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action as HostAction;
use proxy_wasm::types::LogLevel;
use switchyard_core::exchange::{Action, Ctx, Ending, Event, Exchange, Failure, Send};
use switchyard_core::tasks::edge::FORWARDED_HEADERS;
use switchyard_core::{Gateway, LocalReply, RequestHead, UpstreamHead, UpstreamRequest};

use crate::metrics;
use crate::shared::{SharedDataCounters, SharedDataHealth};
use crate::waiters;

/// Header the route uses to pick the upstream cluster.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

/// Envoy's `response.flags` bit for `DC` (downstream connection termination): the client
/// went away before the response was complete.
const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;

/// Where this stream's I/O is, for mapping callbacks to events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the request body is wanted.
    RequestHead,
    /// Buffering the request body.
    RequestBody,
    /// The rewritten request went through the router; its head is due.
    Routed,
    /// The routed answer's body is held until it is complete.
    RoutedBody,
    /// The routed answer streams to the client.
    RoutedStream,
    /// The routed complete answer passes to the client unchanged as it arrives; the core
    /// reads each chunk for its usage.
    RoutedRelay,
    /// A `dispatch_http_call` is in flight, or answered: the response callbacks see only our
    /// own reply (or a held routed response, see `hold_routed`).
    Local,
}

/// The per-stream context.
pub struct SwitchyardHttp {
    gateway: Rc<Gateway>,
    context_id: u32,
    exchange: Exchange,
    phase: Phase,
    /// A routed response was held and then given up for a call or a reply: none of it may
    /// ever pass.
    hold_routed: bool,
    /// Size of the buffered client body (the routed request's body is replaced whole).
    request_body_size: usize,
    /// The client's request head as read (a routed attempt writes only what differs from
    /// it: each write is a host call, and on Envoy each also clears the route cache).
    client_head: Vec<(String, String)>,
    /// The client's buffered body while the request callbacks run (a routed attempt whose
    /// body is the client's, unchanged, does not write it back).
    client_body: Vec<u8>,
    /// The routed response's head as read, while its callback runs (as `client_head`).
    upstream_head: Vec<(String, String)>,
    call_started_ms: u64,
    call_timeout_ms: u64,
    /// The call in flight is the control plane's admission, not an attempt.
    admitting: bool,
    /// This stream, for the root context to wake it while it waits in a queue.
    me: Weak<RefCell<SwitchyardHttp>>,
    /// Listed in a queue (see `crate::waiters`).
    listed: bool,
    /// `on_log` ran: the exchange is over.
    ended: bool,
    /// The clock reading of the event fed last.
    fed_nanos: u64,
}

/// The context the SDK holds: the stream is shared with this VM's list of waiting streams,
/// so the root context's tick can wake it (see `crate::waiters`).
pub struct Shell(Rc<RefCell<SwitchyardHttp>>);

impl Shell {
    /// A stream before its request head.
    pub fn new(gateway: Rc<Gateway>, context_id: u32) -> Self {
        Shell(Rc::new_cyclic(|me| {
            RefCell::new(SwitchyardHttp::new(gateway, context_id, me.clone()))
        }))
    }
}

impl Context for Shell {
    fn on_http_call_response(&mut self, token: u32, headers: usize, body: usize, trailers: usize) {
        self.0
            .borrow_mut()
            .on_http_call_response(token, headers, body, trailers);
    }
}

impl HttpContext for Shell {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> HostAction {
        self.0
            .borrow_mut()
            .on_http_request_headers(num_headers, end_of_stream)
    }
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        self.0
            .borrow_mut()
            .on_http_request_body(body_size, end_of_stream)
    }
    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> HostAction {
        self.0
            .borrow_mut()
            .on_http_response_headers(num_headers, end_of_stream)
    }
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        self.0
            .borrow_mut()
            .on_http_response_body(body_size, end_of_stream)
    }
    fn on_log(&mut self) {
        self.0.borrow_mut().on_log();
    }
}

/// What performing a batch of actions asks of the current callback.
#[derive(Default)]
struct Performed {
    /// Bytes for the client from `Data` actions, in order.
    data: Vec<u8>,
    /// The stream must stop in this callback (a local reply was sent, or a call is out).
    paused: bool,
}

impl SwitchyardHttp {
    fn new(gateway: Rc<Gateway>, context_id: u32, me: Weak<RefCell<SwitchyardHttp>>) -> Self {
        SwitchyardHttp {
            gateway,
            context_id,
            exchange: Exchange::new(),
            phase: Phase::RequestHead,
            hold_routed: false,
            request_body_size: 0,
            client_head: Vec::new(),
            client_body: Vec::new(),
            upstream_head: Vec::new(),
            call_started_ms: 0,
            call_timeout_ms: 0,
            admitting: false,
            me,
            listed: false,
            ended: false,
            fed_nanos: 0,
        }
    }

    /// Woken from the root context while waiting in a queue (this stream is the effective
    /// context): feeds the retry and performs what follows. Returns whether it still waits.
    pub fn retry(&mut self) -> bool {
        if self.ended || !self.exchange.queued() {
            self.listed = false;
            return false;
        }
        let actions = self.feed(Event::Retry);
        self.perform(actions);
        if self.phase == Phase::Routed {
            // The held client request was rewritten for a routed attempt: let it go.
            self.resume_http_request();
        }
        self.listed = self.exchange.queued();
        self.listed
    }
}

impl Context for SwitchyardHttp {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let status: Option<u16> = (num_headers > 0)
            .then(|| self.get_http_call_response_header(":status"))
            .flatten()
            .and_then(|s| s.parse().ok());
        if std::mem::take(&mut self.admitting) {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            let actions = self.feed(Event::AdmitAnswer(status.map(|s| (s, body.as_slice()))));
            self.perform(actions);
            if self.phase == Phase::Routed {
                // The held client request was rewritten for a routed first attempt: let it go.
                self.resume_http_request();
            }
            return;
        }
        let Some(status) = status else {
            // A failed call arrives without headers: a timeout if it ran out its time, else
            // the connection broke (or never came up).
            let elapsed = self.now_ms().saturating_sub(self.call_started_ms);
            let failure = if elapsed + 50 >= self.call_timeout_ms {
                Failure::Timeout
            } else {
                Failure::Reset
            };
            let actions = self.feed(Event::UpstreamFailed(&failure));
            self.perform(actions);
            return;
        };
        let content_type = self.get_http_call_response_header("content-type");
        let retry_after = self.get_http_call_response_header("retry-after");
        let actions = self.feed(Event::UpstreamHead(UpstreamHead {
            status,
            content_type: content_type.as_deref(),
            retry_after: retry_after.as_deref(),
            body_complete: true,
        }));
        if actions.contains(&Action::ReadUpstreamBody) {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            let mut actions: Vec<Action> = actions
                .into_iter()
                .filter(|a| *a != Action::ReadUpstreamBody)
                .collect();
            actions.extend(self.feed(Event::UpstreamBody(&body)));
            self.perform(actions);
        } else {
            self.perform(actions);
        }
    }
}

impl SwitchyardHttp {
    fn now_ms(&self) -> u64 {
        self.now_nanos() / 1_000_000
    }

    fn now_nanos(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    /// Per-event entropy for weighted routing and ids, without a WASI random source: mixed
    /// from the clock reading `nanos` and this stream's id.
    fn random(&self, nanos: u64) -> u64 {
        let mut z = nanos ^ (u64::from(self.context_id) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn feed(&mut self, event: Event<'_>) -> Vec<Action> {
        // One clock read per event (each host call crosses the VM boundary).
        let nanos = self.now_nanos();
        self.feed_at(event, nanos)
    }

    /// Feeds `event` at the clock reading `nanos`: an event that follows another in the same
    /// callback (the end of a body after its last chunk) reuses that event's reading.
    fn feed_at(&mut self, event: Event<'_>, nanos: u64) -> Vec<Action> {
        self.fed_nanos = nanos;
        let cx = Ctx {
            now_ms: nanos / 1_000_000,
            random: self.random(nanos),
            health: &SharedDataHealth,
            counters: &SharedDataCounters,
        };
        self.exchange.handle(&self.gateway, event, &cx)
    }

    /// Performs the core's actions; returns what the current callback must do.
    fn perform(&mut self, actions: Vec<Action>) -> Performed {
        let mut done = Performed::default();
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::ReadBody { .. } => self.phase = Phase::RequestBody,
                Action::Reply(reply) => {
                    self.send_reply(reply);
                    done.paused = true;
                }
                Action::Send(send) => {
                    // Only the client's own request can be routed, and only once.
                    if send.route && self.phase == Phase::RequestBody {
                        self.route(&send);
                    } else {
                        self.give_up_routed();
                        if let Err(failure) = self.call(&send.request, send.timeout_ms) {
                            queue.extend(self.feed(Event::UpstreamFailed(&failure)));
                            continue;
                        }
                        done.paused = true;
                    }
                }
                Action::ReadUpstreamBody => {
                    if self.phase == Phase::Routed {
                        self.phase = Phase::RoutedBody;
                    }
                    done.paused = true;
                }
                Action::StartResponse(head) => {
                    // Only a routed stream starts a response here (a call's answer is whole,
                    // so the core replies to it).
                    self.set_response_head(head.status, &head.headers);
                    if header(&self.upstream_head, "content-length").is_some() {
                        self.set_http_response_header("content-length", None);
                    }
                    self.phase = Phase::RoutedStream;
                }
                Action::RelayResponse(head) => {
                    // The upstream's body and its length pass unchanged: only the head is
                    // rewritten, and the body is not held.
                    self.set_response_head(head.status, &head.headers);
                    self.phase = Phase::RoutedRelay;
                }
                Action::Data(bytes) => done.data.extend(bytes),
                Action::EndResponse => {}
                Action::Log(line) => log::warn!("{line}"),
                Action::Wait { queue, until_ms } => {
                    // A routed attempt's provider answered 429 and every other deployment is
                    // busy: its response is held, never to pass (what follows is a call or a
                    // reply), and the client's request is not resumed again.
                    if matches!(
                        self.phase,
                        Phase::Routed
                            | Phase::RoutedBody
                            | Phase::RoutedStream
                            | Phase::RoutedRelay
                    ) {
                        self.give_up_routed();
                    }
                    if !self.listed {
                        waiters::add(&queue, self.context_id, self.me.clone(), until_ms);
                        self.listed = true;
                    }
                    done.paused = true;
                }
                Action::Admit(request) => {
                    if self.call(&request, request.timeout_ms).is_err() {
                        queue.extend(self.feed(Event::AdmitAnswer(None)));
                        continue;
                    }
                    self.admitting = true;
                    done.paused = true;
                }
            }
        }
        done
    }

    /// Rewrites the held client request for `send` and lets the router take it.
    fn route(&mut self, send: &Send) {
        let upstream = &send.request;
        // Only what differs from the client's head is written: a header is removed only if
        // the client sent it and the attempt does not set it, and set only if its value
        // changes (each write is a host call).
        let sets = |name: &str| upstream.headers.iter().any(|(n, _)| n == name);
        // Never forward the client's gateway key (an attempt that sets one of these headers
        // replaces the client's value). Without the client's head, every one is removed.
        let head_known = !self.client_head.is_empty();
        for name in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "accept-encoding",
        ] {
            if !sets(name) && (!head_known || header(&self.client_head, name).is_some()) {
                self.set_http_request_header(name, None);
            }
        }
        self.set_request_header(":method", upstream.method);
        self.set_request_header(":path", &upstream.path);
        self.set_request_header(":authority", &upstream.authority);
        self.set_request_header(CLUSTER_HEADER, &upstream.cluster);
        // A stream's deadline bounds the time to the first byte: Envoy stops the per-try timer
        // once the response starts, so a long stream is not cut (the route has no shorter
        // global timeout). A complete answer's bounds the whole answer, as a call's does.
        let timeout_header = if send.stream {
            "x-envoy-upstream-rq-per-try-timeout-ms"
        } else {
            "x-envoy-upstream-rq-timeout-ms"
        };
        self.set_request_header(timeout_header, &send.timeout_ms.to_string());
        for (name, value) in &upstream.headers {
            self.set_request_header(name, value);
        }
        if upstream.body != self.client_body || self.client_body.len() != self.request_body_size {
            self.set_request_header("content-length", &upstream.body.len().to_string());
            self.set_http_request_body(0, self.request_body_size, &upstream.body);
        }
        // The client's request is routed once: what it was is not needed again.
        self.client_head = Vec::new();
        self.client_body = Vec::new();
        self.phase = Phase::Routed;
    }

    /// Sets request header `name` unless the client's head already has that value (once).
    fn set_request_header(&self, name: &str, value: &str) {
        if only_value(&self.client_head, name) != Some(value) {
            self.set_http_request_header(name, Some(value));
        }
    }

    /// Rewrites the routed response's head to the core's `status` and `headers`, writing
    /// only what differs from the upstream's head.
    fn set_response_head(&self, status: u16, headers: &[(String, String)]) {
        let status = status.to_string();
        let changed =
            |name: &str, value: &str| only_value(&self.upstream_head, name) != Some(value);
        if changed(":status", &status) {
            self.set_http_response_header(":status", Some(&status));
        }
        for (name, value) in headers {
            if changed(name, value) {
                self.set_http_response_header(name, Some(value));
            }
        }
    }

    /// Sends `upstream` as a `dispatch_http_call`.
    fn call(&mut self, upstream: &UpstreamRequest, timeout_ms: u64) -> Result<(), Failure> {
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", upstream.method),
            (":path", &upstream.path),
            (":authority", &upstream.authority),
            (":scheme", &upstream.scheme),
        ];
        headers.extend(
            upstream
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        self.call_started_ms = self.now_ms();
        self.call_timeout_ms = timeout_ms;
        self.dispatch_http_call(
            &upstream.cluster,
            headers,
            Some(&upstream.body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map(|token| {
            if waiters::driving() {
                // Made from the root's callback: its answer arrives there.
                waiters::forward_call(token, self.context_id, self.me.clone());
            }
        })
        .map_err(|status| {
            Failure::NotSent(format!(
                "dispatch to cluster `{}` failed: {status:?}",
                upstream.cluster
            ))
        })
    }

    /// Leaves the router's response behind: held if one is under way, never to pass.
    fn give_up_routed(&mut self) {
        if matches!(
            self.phase,
            Phase::Routed | Phase::RoutedBody | Phase::RoutedStream | Phase::RoutedRelay
        ) {
            self.hold_routed = true;
        }
        self.phase = Phase::Local;
        // Only a request in `Phase::RequestBody` is ever routed, so the client's head and body
        // are not needed again: a call's wait can be long, and at thousands of connections
        // each waiting request's copy of them is guest memory that never shrinks.
        self.client_head = Vec::new();
        self.client_body = Vec::new();
    }

    fn send_reply(&mut self, reply: LocalReply) {
        self.give_up_routed();
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(u32::from(reply.status), headers, Some(&reply.body));
    }

    /// Writes a complete answer over the held routed response (`held`, its whole body of
    /// `held_size` bytes). An answer whose body is the upstream's, unchanged (the same-format
    /// fast path), keeps the held body and its length: only the head is rewritten.
    fn replace_routed(&mut self, reply: &LocalReply, held: &[u8], held_size: usize) {
        self.set_http_response_header(":status", Some(&reply.status.to_string()));
        for (name, value) in &reply.headers {
            self.set_http_response_header(name, Some(value));
        }
        if reply.body != held || held.len() != held_size {
            self.set_http_response_header("content-encoding", None);
            self.set_http_response_header("content-length", Some(&reply.body.len().to_string()));
            self.set_http_response_body(0, held_size, &reply.body);
        }
        self.phase = Phase::Local;
    }

    /// An integer property (Envoy encodes them as 8 little-endian bytes).
    fn u64_property(&self, path: &[&str]) -> Option<u64> {
        let bytes = self.get_property(path.to_vec())?;
        Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
    }
}

impl HttpContext for SwitchyardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> HostAction {
        // One read of the whole head instead of a host call per header the core may want
        // (each crosses the VM boundary, and each value found is one more allocation call).
        let headers = self.get_http_request_headers();
        let get = |name: &str| header(&headers, name);
        let forwarded: Vec<(&str, &str)> = FORWARDED_HEADERS
            .iter()
            .filter_map(|name| Some((*name, get(name)?)))
            .collect();
        let head = RequestHead {
            method: get(":method").unwrap_or_default(),
            path: get(":path").unwrap_or_default(),
            authorization: get("authorization"),
            x_api_key: get("x-api-key"),
            x_goog_api_key: get("x-goog-api-key"),
            anthropic_version: get("anthropic-version"),
            content_length: get("content-length").and_then(|v| v.trim().parse().ok()),
            request_id: get("x-request-id"),
            forwarded: &forwarded,
        };
        let mut actions = self.feed(Event::RequestHead(head));
        if refused_for_its_key(&actions) && self.gateway.control_plane().is_some() {
            // This VM may not have applied a key set another worker already synced.
            let version = self.gateway.managed_keys_version();
            if let Some(newer) = crate::control::shared_snapshot_newer_than(version) {
                self.gateway = Rc::new(self.gateway.with_managed_keys(newer));
                self.exchange = Exchange::new();
                actions = self.feed(Event::RequestHead(head));
            }
        }
        if end_of_stream && actions.iter().any(|a| matches!(a, Action::ReadBody { .. })) {
            actions.extend(self.feed(Event::RequestBody(&[])));
        }
        self.client_head = headers;
        self.perform(actions);
        HostAction::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        if self.phase != Phase::RequestBody {
            return HostAction::Continue;
        }
        let actions = if body_size > self.gateway.max_request_bytes() {
            self.feed(Event::RequestBodyTooLarge)
        } else if !end_of_stream {
            // Keep buffering: the whole body is needed to read `model`.
            return HostAction::Pause;
        } else {
            self.request_body_size = body_size;
            let body = self.get_http_request_body(0, body_size).unwrap_or_default();
            let actions = self.feed(Event::RequestBody(&body));
            self.client_body = body;
            actions
        };
        if self.perform(actions).paused {
            HostAction::Pause
        } else {
            HostAction::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> HostAction {
        if self.hold_routed {
            // A replaced or held routed response never passes.
            return HostAction::Pause;
        }
        if self.phase != Phase::Routed {
            // Our own reply, or one Envoy made before the request was routed, passes.
            return HostAction::Continue;
        }
        // One read of the whole head (the values the core needs come from it too). The
        // provider's account identifiers never reach the client (whatever answer the core
        // makes of this response, its headers are the ones Envoy sends).
        let mut headers = self.get_http_response_headers();
        headers.retain(|(name, _)| {
            let strip = self.exchange.strips_upstream_header(name);
            if strip {
                self.set_http_response_header(name, None);
            }
            !strip
        });
        let mut status = None;
        let (mut content_type, mut retry_after) = (None, None);
        for (name, value) in &headers {
            match name.as_str() {
                ":status" => status = value.parse().ok(),
                "content-type" => content_type = Some(value.as_str()),
                "retry-after" => retry_after = Some(value.as_str()),
                _ => {}
            }
        }
        let mut actions = self.feed(Event::UpstreamHead(UpstreamHead {
            status: status.unwrap_or(502),
            content_type,
            retry_after,
            body_complete: false,
        }));
        if end_of_stream && actions.contains(&Action::ReadUpstreamBody) {
            // No body follows; the reply is sent in place of this response.
            actions.extend(self.feed_at(Event::UpstreamBody(&[]), self.fed_nanos));
        } else if end_of_stream
            && actions
                .iter()
                .any(|a| matches!(a, Action::RelayResponse(_)))
        {
            actions.extend(self.feed_at(Event::UpstreamEnd, self.fed_nanos));
        }
        self.upstream_head = headers;
        let performed = self.perform(actions);
        self.upstream_head = Vec::new();
        if performed.paused {
            HostAction::Pause
        } else {
            HostAction::Continue
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        match self.phase {
            phase @ (Phase::RoutedStream | Phase::RoutedRelay) => {
                let chunk = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                let mut actions = self.feed(Event::UpstreamData(&chunk));
                if end_of_stream {
                    actions.extend(self.feed_at(Event::UpstreamEnd, self.fed_nanos));
                }
                let performed = self.perform(actions);
                // A stream's chunk is replaced by the core's bytes; a relayed one passes as
                // it came (the core only read it).
                if phase == Phase::RoutedStream {
                    self.set_http_response_body(0, body_size, &performed.data);
                }
                HostAction::Continue
            }
            Phase::RoutedBody => {
                if !end_of_stream {
                    return HostAction::Pause;
                }
                let body = self
                    .get_http_response_body(0, body_size)
                    .unwrap_or_default();
                let actions = self.feed(Event::UpstreamBody(&body));
                // A complete answer is written over the held response in place; a fallback
                // call keeps holding it.
                if actions.iter().any(|a| matches!(a, Action::Send(_))) {
                    self.perform(actions);
                    return HostAction::Pause;
                }
                for action in actions {
                    match action {
                        Action::Reply(reply) => self.replace_routed(&reply, &body, body_size),
                        Action::Log(line) => log::warn!("{line}"),
                        _ => {}
                    }
                }
                HostAction::Continue
            }
            // A failed primary's rest is held, then dropped with the stream.
            _ if self.hold_routed => HostAction::Pause,
            _ => HostAction::Continue,
        }
    }

    fn on_log(&mut self) {
        self.ended = true;
        let answered = self.exchange.answered();
        let ending = if answered {
            Ending::default()
        } else {
            // Envoy says why the stream ended early: the client went away, or the host
            // answered on its own (a reset under a held response).
            let flags = self.u64_property(&["response", "flags"]).unwrap_or(0);
            let code = self
                .u64_property(&["response", "code"])
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| *c != 0);
            Ending {
                client_gone: flags & DOWNSTREAM_CONNECTION_TERMINATION != 0,
                client_status: code,
            }
        };
        let now_ms = self.now_ms();
        let cx = Ctx {
            now_ms,
            random: 0,
            health: &SharedDataHealth,
            counters: &SharedDataCounters,
        };
        if let Some(record) = self.exchange.finish(ending, &cx) {
            metrics::record(&record);
            crate::control::ship(&record, now_ms);
            // The host's own level, asked per request: at `warn` and above (a production
            // Envoy's usual `-l`), the line would be formatted and sent only to be dropped.
            if hostcalls::get_log_level().map_or(true, |l| l as u32 <= LogLevel::Info as u32) {
                log::info!("switchyard usage {}", record.to_json());
            }
        }
    }
}

/// Whether the core refused the request head for its key (401: none, unknown, expired).
fn refused_for_its_key(actions: &[Action]) -> bool {
    matches!(actions, [Action::Reply(reply)] if reply.status == 401)
}

/// The first value of header `name` in a head read from the host (names are lower-case).
fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The value of header `name` when the head has it exactly once: a header that is there
/// with this value, and no other, need not be written (a write replaces every value).
fn only_value<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let mut values = head.iter().filter(|(n, _)| n == name);
    let (_, value) = values.next()?;
    values.next().is_none().then_some(value.as_str())
}
