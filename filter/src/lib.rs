//! `filter.wasm`: the proxy-wasm adapter over `switchyard-core`.
//!
//! This file only moves bytes between the host (Envoy, or `host-runner`) and the core: it
//! reads headers and bodies, asks the core what to do, and writes the answer back. Every
//! decision — key checks, routing, translation, usage — is made in `switchyard-core`.
//!
//! Per request: headers are held until the body is complete (the core needs the `model`;
//! Envoy must set `allow_on_headers_stop_iteration: true`); then the request is rewritten for
//! the first deployment of the attempt chain and routed with the `x-switchyard-cluster`
//! header (Envoy's `cluster_header` route). Streamed answers are translated chunk by chunk as
//! they pass; complete answers and errors are small and translated whole.
//!
//! ## Fallback
//! When the first deployment fails before any byte reached the client (connection failure,
//! timeout — Envoy answers those with a local 503/504/408 that passes through this filter —
//! or a retryable status such as 429/5xx), the held response is discarded and the next
//! deployments are tried with `dispatch_http_call`, each with the request re-translated for
//! its provider. The answer that succeeds is sent as the response, translated into the
//! caller's dialect (a stream is sent as one complete, valid SSE body).
//!
//! After the first byte there is no switching: a stream that ends early or turns malformed
//! is closed with an error event in the caller's dialect. An upstream *reset* mid-stream (or
//! a stall past the route's `per_try_idle_timeout`) is the exception on Envoy: the router
//! resets the client stream and calls no filter callback that could still write, so the
//! client sees a transport error instead.
//!
//! Why not Envoy's own retries? A retry must change both the cluster and the body (another
//! provider's schema). Envoy's `retry_policy` re-sends the same body, and per-attempt rewrite
//! needs a second wasm filter in the router's upstream chain plus per-model aggregate
//! clusters; that doubles the configuration every operator must get right and still cannot
//! re-translate the *response* per attempt. The primary path keeps full streaming, and the
//! fallback path buffers only answers that the primary failed to give — the least buffering
//! for the behaviour wanted. Envoy's outlier detection and health checks still balance
//! between hosts *inside* one deployment (e.g. two gpu-backend instances in one cluster).

mod health;
mod metrics;

use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use switchyard_core::attempts::{AttemptLog, Outcome, ATTEMPTS_HEADER};
use switchyard_core::canonical::TokenUsage;
use switchyard_core::{
    Admitted, Dialect, Gateway, GatewayError, HeadOutcome, LocalReply, Plan, RequestHead,
    ResponseStream,
};

/// Header the route uses to pick the upstream cluster.
pub const CLUSTER_HEADER: &str = "x-switchyard-cluster";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SwitchyardRoot::default()) });
}}

/// One per VM: holds the validated gateway configuration.
#[derive(Default)]
struct SwitchyardRoot {
    gateway: Option<Rc<Gateway>>,
}

impl Context for SwitchyardRoot {}

impl RootContext for SwitchyardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::error!(
                "switchyard: no plugin configuration given; the gateway config is required"
            );
            return false;
        };
        match Gateway::from_json(&bytes) {
            Ok(gateway) => {
                let gateway = gateway.resolve_secrets(&|name| std::env::var(name).ok());
                for unservable in gateway.unservable_models() {
                    log::warn!(
                        "switchyard: model `{}` cannot be served: {}",
                        unservable.model,
                        unservable.reason
                    );
                }
                log::info!(
                    "switchyard: configured {} models, {} providers, {} keys",
                    gateway.config().models.len(),
                    gateway.config().providers.len(),
                    gateway.config().keys.len()
                );
                self.gateway = Some(Rc::new(gateway));
                true
            }
            Err(err) => {
                log::error!("switchyard: {err}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = self.gateway.clone()?;
        Some(Box::new(SwitchyardHttp::new(gateway, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where one HTTP stream is in its life.
enum State {
    /// Waiting for request headers.
    Headers,
    /// Admitted; buffering the request body.
    RequestBody(Admitted),
    /// Forwarded upstream (attempt 0).
    Forwarded,
    /// Upstream answered 2xx with a complete body: buffer and translate at the end.
    BufferSuccess,
    /// Upstream answered 2xx with a stream: translate chunk by chunk.
    Streaming,
    /// Upstream answered with a final error: buffer and translate at the end.
    BufferError,
    /// The primary failed; later attempts run through `dispatch_http_call`.
    FallingBack,
    /// We answered locally; pass our own reply through untouched.
    LocalReply,
    /// A fallback answer replaced the held primary response: nothing of the primary may
    /// pass any more (a host may still deliver its body to us).
    Replaced,
}

struct SwitchyardHttp {
    gateway: Rc<Gateway>,
    context_id: u32,
    state: State,
    dialect: Dialect,
    plan: Option<Plan>,
    stream: Option<Box<dyn ResponseStream>>,
    /// Whether the streamed answer reached its end (false after a reset mid-stream).
    stream_ended: bool,
    /// Index into `plan.attempts` of the attempt in flight / that answered.
    attempt: usize,
    attempt_started_ms: u64,
    attempts: AttemptLog,
    response_status: u16,
    usage: TokenUsage,
    final_status: u16,
    started_ms: u64,
}

impl Context for SwitchyardHttp {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let status: Option<u16> = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        self.on_fallback_answer(status, &body);
    }
}

impl SwitchyardHttp {
    fn new(gateway: Rc<Gateway>, context_id: u32) -> Self {
        SwitchyardHttp {
            gateway,
            context_id,
            state: State::Headers,
            dialect: Dialect::OpenAi,
            plan: None,
            stream: None,
            stream_ended: false,
            attempt: 0,
            attempt_started_ms: 0,
            attempts: AttemptLog::default(),
            response_status: 0,
            usage: TokenUsage::default(),
            final_status: 0,
            started_ms: 0,
        }
    }

    fn now_unix(&self) -> u64 {
        self.now_ms() / 1000
    }

    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// Per-request entropy for weighted routing and ids, without a WASI random source.
    fn random(&self) -> u64 {
        let nanos = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut z = nanos ^ (u64::from(self.context_id) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn reply(&mut self, reply: LocalReply) -> Action {
        self.state = if matches!(self.state, State::FallingBack) {
            State::Replaced
        } else {
            State::LocalReply
        };
        self.final_status = reply.status;
        let attempts = self.attempts.header_value();
        let mut headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !attempts.is_empty() {
            headers.push((ATTEMPTS_HEADER, &attempts));
        }
        self.send_http_response(u32::from(reply.status), headers, Some(&reply.body));
        Action::Pause
    }

    fn reply_error(&mut self, err: &GatewayError) -> Action {
        let dialect = self.dialect;
        self.reply(LocalReply::error(err, dialect))
    }

    /// Rewrites the held request for attempt 0 of the plan and lets it go.
    fn forward(&mut self, plan: Plan, body_size: usize) -> Action {
        let upstream = match plan.upstream_request(0) {
            Ok(u) => u,
            Err(err) => {
                log::error!("switchyard: {}", err.message);
                return self.reply_error(&err);
            }
        };
        // Never forward the client's gateway key.
        self.set_http_request_header("authorization", None);
        self.set_http_request_header("x-api-key", None);
        self.set_http_request_header(":method", Some(upstream.method));
        self.set_http_request_header(":path", Some(&upstream.path));
        self.set_http_request_header(":authority", Some(&upstream.authority));
        self.set_http_request_header(CLUSTER_HEADER, Some(&upstream.cluster));
        self.set_http_request_header("accept-encoding", None);
        // Bound this attempt by the model's attempt timeout. A complete answer gets Envoy's
        // request timeout (time to the whole answer). A stream gets the per-try timeout: Envoy
        // stops it once the response starts, so it bounds time to first byte without cutting
        // a long stream (the route must have no shorter global timeout; ours has none).
        let timeout_header = if plan.stream {
            "x-envoy-upstream-rq-per-try-timeout-ms"
        } else {
            "x-envoy-upstream-rq-timeout-ms"
        };
        self.set_http_request_header(timeout_header, Some(&upstream.timeout_ms.to_string()));
        for (name, value) in &upstream.headers {
            self.set_http_request_header(name, Some(value));
        }
        self.set_http_request_header("content-length", Some(&upstream.body.len().to_string()));
        self.set_http_request_body(0, body_size, &upstream.body);
        log::debug!(
            "switchyard: forwarding to cluster {} path {}",
            upstream.cluster,
            upstream.path
        );
        self.attempt = 0;
        self.attempt_started_ms = self.now_ms();
        self.plan = Some(plan);
        self.state = State::Forwarded;
        Action::Continue
    }

    fn current_deployment(&self) -> String {
        self.plan
            .as_ref()
            .and_then(|p| p.attempts.get(self.attempt))
            .map(|a| a.deployment_id.clone())
            .unwrap_or_default()
    }

    fn log_attempt(&mut self, outcome: Outcome) {
        let millis = self.now_ms().saturating_sub(self.attempt_started_ms);
        let deployment = self.current_deployment();
        self.attempts.push(deployment, outcome, millis);
    }

    fn mark_failure(&mut self, outcome: Outcome) {
        let deployment = self.current_deployment();
        if let Some(plan) = &self.plan {
            health::record_failure(&deployment, &plan.fallback, self.now_ms());
        }
        self.log_attempt(outcome);
    }

    fn mark_success(&mut self, status: u16) {
        let latency = self.now_ms().saturating_sub(self.attempt_started_ms);
        health::record_success(&self.current_deployment(), latency);
        self.log_attempt(Outcome::Status(status));
    }

    /// Whether another attempt may start: one is left and the total budget is not spent.
    fn can_fall_back(&self) -> bool {
        let Some(plan) = &self.plan else { return false };
        let elapsed = self.now_ms().saturating_sub(self.started_ms);
        self.attempt + 1 < plan.attempts.len() && elapsed < plan.fallback.total_timeout_ms
    }

    /// Starts the next attempt that can be dispatched; answers with the all-failed error when
    /// none is left.
    fn dispatch_next(&mut self) {
        while self.can_fall_back() {
            self.attempt += 1;
            self.attempt_started_ms = self.now_ms();
            let Some(plan) = &self.plan else { return };
            let remaining = plan
                .fallback
                .total_timeout_ms
                .saturating_sub(self.now_ms().saturating_sub(self.started_ms));
            let upstream = match plan.upstream_request(self.attempt) {
                Ok(u) => u,
                Err(err) => {
                    self.mark_failure(Outcome::NotSent(err.message.clone()));
                    continue;
                }
            };
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
            let timeout = Duration::from_millis(upstream.timeout_ms.min(remaining).max(1));
            match self.dispatch_http_call(
                &upstream.cluster,
                headers,
                Some(&upstream.body),
                vec![],
                timeout,
            ) {
                Ok(_) => {
                    log::debug!(
                        "switchyard: fallback attempt {} to {}",
                        self.attempt,
                        upstream.cluster
                    );
                    return;
                }
                Err(status) => self.mark_failure(Outcome::NotSent(format!("{status:?}"))),
            }
        }
        self.all_failed();
    }

    fn all_failed(&mut self) {
        let err = self.attempts.all_failed();
        self.reply_error(&err);
    }

    /// A fallback attempt answered (`status` is `None` when it failed without a response).
    fn on_fallback_answer(&mut self, status: Option<u16>, body: &[u8]) {
        let Some(plan) = self.plan.as_ref() else {
            return;
        };
        let status = match status {
            None => {
                // proxy-wasm reports a failed or timed-out call as a response without headers.
                self.mark_failure(Outcome::Timeout);
                return self.dispatch_next();
            }
            Some(s) if plan.should_retry_status(s) => {
                self.mark_failure(Outcome::Status(s));
                return self.dispatch_next();
            }
            Some(s) => s,
        };
        let attempt = self.attempt;
        let dialect = plan.dialect;
        let reply = if (200..300).contains(&status) {
            if plan.stream {
                let mut stream = plan.response_stream(attempt);
                let mut out = stream.push(body);
                out.extend(stream.finish());
                self.usage = stream.usage();
                Ok(LocalReply {
                    status,
                    headers: vec![
                        ("content-type".into(), "text/event-stream".into()),
                        ("cache-control".into(), "no-cache".into()),
                    ],
                    body: out,
                })
            } else {
                plan.translate_response(attempt, body).map(|(out, usage)| {
                    self.usage = usage;
                    LocalReply {
                        status,
                        headers: vec![("content-type".into(), "application/json".into())],
                        body: out,
                    }
                })
            }
        } else {
            Err(plan.translate_error(attempt, status, body))
        };
        // The local reply replaces the held primary response; resuming that response as well
        // would race the reply on hosts that release it first.
        match reply {
            Ok(reply) => {
                self.mark_success(status);
                self.reply(reply);
            }
            Err(err) => {
                // A final (non-retryable) answer: the deployment is healthy, the request is not.
                self.log_attempt(Outcome::Status(status));
                let reply = LocalReply::error(&err, dialect);
                self.reply(reply);
            }
        }
    }

    fn take_response_body(&self, body_size: usize) -> Vec<u8> {
        self.get_http_response_body(0, body_size)
            .unwrap_or_default()
    }

    /// Translates a complete primary body (success or error); returns the client body.
    fn finish_buffered(&mut self, body: &[u8]) -> Vec<u8> {
        let Some(plan) = &self.plan else {
            return body.to_vec();
        };
        let status = self.response_status;
        let translated = if matches!(self.state, State::BufferSuccess) {
            plan.translate_response(self.attempt, body)
        } else {
            Err(plan.translate_error(self.attempt, status, body))
        };
        let dialect = plan.dialect;
        match translated {
            Ok((out, usage)) => {
                self.usage = usage;
                out
            }
            Err(err) => {
                if err.status != status {
                    self.set_http_response_header(":status", Some(&err.status.to_string()));
                }
                if let Some(secs) = err.retry_after {
                    self.set_http_response_header("retry-after", Some(&secs.to_string()));
                }
                self.final_status = err.status;
                err.body(dialect)
            }
        }
    }
}

impl HttpContext for SwitchyardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.started_ms = self.now_ms();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let authorization = self.get_http_request_header("authorization");
        let x_api_key = self.get_http_request_header("x-api-key");
        let anthropic_version = self.get_http_request_header("anthropic-version");
        let content_length = self
            .get_http_request_header("content-length")
            .and_then(|v| v.trim().parse().ok());
        let head = RequestHead {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
            x_api_key: x_api_key.as_deref(),
            anthropic_version: anthropic_version.as_deref(),
            content_length,
        };
        match self.gateway.on_request_head(&head, self.now_unix()) {
            HeadOutcome::Reply(reply) => self.reply(reply),
            HeadOutcome::ReadBody(admitted) => {
                self.dialect = admitted.dialect;
                if end_of_stream {
                    return self.reply_error(&GatewayError::invalid("request body is required"));
                }
                self.state = State::RequestBody(admitted);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let State::RequestBody(admitted) = &self.state else {
            return Action::Continue;
        };
        if body_size > self.gateway.max_request_bytes() {
            let err = self.gateway.too_large();
            return self.reply_error(&err);
        }
        if !end_of_stream {
            // Keep buffering: the whole body is needed to read `model`.
            return Action::Pause;
        }
        let admitted = admitted.clone();
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let health = health::SharedHealth {
            now_ms: self.now_ms(),
        };
        let plan = self
            .gateway
            .plan(&admitted, &body, self.random(), self.now_unix(), &health);
        match plan {
            Ok(plan) => self.forward(plan, body_size),
            Err(err) => self.reply_error(&err),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !matches!(self.state, State::Forwarded) {
            return Action::Continue;
        }
        let Some(plan) = &self.plan else {
            return Action::Continue;
        };
        let status: u16 = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        if plan.should_retry_status(status) && self.can_fall_back() {
            // Nothing has reached the client yet: hold this response and try the next one.
            self.mark_failure(Outcome::Status(status));
            self.state = State::FallingBack;
            self.dispatch_next();
            return Action::Pause;
        }
        self.response_status = status;
        self.final_status = status;
        let stream = plan.stream;
        let content_type = self
            .get_http_response_header("content-type")
            .unwrap_or_default();
        self.set_http_response_header("content-length", None);
        if (200..300).contains(&status) {
            self.mark_success(status);
            let Some(plan) = &self.plan else {
                return Action::Continue;
            };
            self.set_http_response_header("content-type", Some(plan.response_content_type()));
            let attempts = self.attempts.header_value();
            self.set_http_response_header(ATTEMPTS_HEADER, Some(&attempts));
            if stream && content_type.starts_with("text/event-stream") {
                self.stream = Some(plan.response_stream(self.attempt));
                self.state = State::Streaming;
                self.set_http_response_header("cache-control", Some("no-cache"));
                if end_of_stream {
                    // A stream response without a body: nothing can be added to it here, so
                    // the client sees an empty stream; meter it as the failure it is.
                    log::warn!("switchyard: upstream answered a stream without a body");
                    self.stream_ended = true;
                    self.final_status = 502;
                }
                return Action::Continue;
            }
            self.state = State::BufferSuccess;
        } else {
            if plan.should_retry_status(status) {
                self.mark_failure(Outcome::Status(status));
            } else {
                self.log_attempt(Outcome::Status(status));
            }
            self.state = State::BufferError;
            self.set_http_response_header("content-type", Some("application/json"));
        }
        let attempts = self.attempts.header_value();
        self.set_http_response_header(ATTEMPTS_HEADER, Some(&attempts));
        if end_of_stream {
            // No body will follow; translate an empty body now (an error needs its JSON).
            self.finish_buffered(&[]);
            return Action::Continue;
        }
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.state {
            State::Streaming => {
                let chunk = self.take_response_body(body_size);
                let Some(stream) = self.stream.as_mut() else {
                    return Action::Continue;
                };
                let mut out = stream.push(&chunk);
                if end_of_stream {
                    out.extend(stream.finish());
                    self.stream_ended = true;
                }
                self.usage = stream.usage();
                if stream.failed() {
                    self.final_status = 502;
                }
                self.set_http_response_body(0, body_size, &out);
                Action::Continue
            }
            State::BufferSuccess | State::BufferError => {
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = self.take_response_body(body_size);
                let out = self.finish_buffered(&body);
                self.set_http_response_body(0, body_size, &out);
                Action::Continue
            }
            // The failed primary's body is held, then discarded once the fallback answers.
            State::FallingBack | State::Replaced => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        let complete = self.stream.as_ref().is_some_and(|s| s.complete());
        if matches!(self.state, State::Streaming) && !self.stream_ended && !complete {
            // The stream was reset before the client had the whole answer (upstream or
            // client): not a success. A client that hangs up after the terminal event (as
            // SDKs do at `[DONE]`) got everything, so that still counts as one.
            self.final_status = 502;
        }
        let Some(plan) = &self.plan else {
            return;
        };
        let latency = self.now_ms().saturating_sub(self.started_ms);
        let attempts = self.attempts.count();
        let record = plan.usage_record(
            self.attempt,
            self.usage,
            self.final_status,
            attempts,
            Some(latency),
        );
        metrics::record(&record);
        log::info!("switchyard usage {}", record.to_json());
    }
}
