//! `filter.wasm`: the proxy-wasm adapter over `switchyard-core`.
//!
//! This file only moves bytes between the host (Envoy, or `host-runner`) and the core: it
//! reads headers and bodies, asks the core what to do, and writes the answer back. Every
//! decision — key checks, routing, translation, usage — is made in `switchyard-core`.
//!
//! Per request: headers are held until the body is complete (the core needs the `model`);
//! then the request is rewritten for the chosen deployment and routed with the
//! `x-switchyard-cluster` header (Envoy's `cluster_header` route). Streamed answers are
//! translated chunk by chunk as they pass; complete answers and errors are buffered (they are
//! small) and translated whole.

mod metrics;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use switchyard_core::routing::NoHealth;
use switchyard_core::{
    Admitted, Dialect, ErrorKind, Gateway, GatewayError, HeadOutcome, LocalReply, Plan,
    RequestHead, ResponseStream,
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
        Some(Box::new(SwitchyardHttp {
            gateway,
            context_id,
            state: State::Headers,
            dialect: Dialect::OpenAi,
            plan: None,
            stream: None,
            response_status: 0,
            usage: Default::default(),
            final_status: 0,
            started_ms: 0,
        }))
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
    /// Forwarded upstream.
    Forwarded,
    /// Upstream answered 2xx with a complete body: buffer and translate at the end.
    BufferSuccess,
    /// Upstream answered 2xx with a stream: translate chunk by chunk.
    Streaming,
    /// Upstream answered with an error: buffer and translate at the end.
    BufferError,
    /// We answered locally; pass our own reply through untouched.
    LocalReply,
}

struct SwitchyardHttp {
    gateway: Rc<Gateway>,
    context_id: u32,
    state: State,
    dialect: Dialect,
    plan: Option<Plan>,
    stream: Option<Box<dyn ResponseStream>>,
    response_status: u16,
    usage: switchyard_core::canonical::TokenUsage,
    final_status: u16,
    started_ms: u64,
}

impl Context for SwitchyardHttp {}

impl SwitchyardHttp {
    fn now_unix(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
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
        self.state = State::LocalReply;
        self.final_status = reply.status;
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.send_http_response(u32::from(reply.status), headers, Some(&reply.body));
        Action::Pause
    }

    fn reply_error(&mut self, err: &GatewayError) -> Action {
        let dialect = self.dialect;
        self.reply(LocalReply::error(err, dialect))
    }

    /// Rewrites the held request for attempt 0 of the plan and lets it go.
    fn forward(&mut self, plan: Plan, body_size: usize) -> Action {
        let upstream = match plan.upstream_request(0, &|name| std::env::var(name).ok()) {
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
        self.plan = Some(plan);
        self.state = State::Forwarded;
        Action::Continue
    }

    fn take_response_body(&self, body_size: usize) -> Vec<u8> {
        self.get_http_response_body(0, body_size)
            .unwrap_or_default()
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
        let outcome = self.gateway.on_request_head(&head, self.now_unix());
        match outcome {
            HeadOutcome::Reply(reply) => {
                if path.starts_with("/v1/messages") || anthropic_version.is_some() {
                    self.dialect = Dialect::Anthropic;
                }
                self.reply(reply)
            }
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
        log::debug!("switchyard: request body {body_size} bytes, end_of_stream={end_of_stream}");
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
        let plan = self
            .gateway
            .plan(&admitted, &body, self.random(), self.now_unix(), &NoHealth);
        match plan {
            Ok(plan) => self.forward(plan, body_size),
            Err(err) => self.reply_error(&err),
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if matches!(self.state, State::LocalReply) {
            return Action::Continue;
        }
        let Some(plan) = &self.plan else {
            return Action::Continue;
        };
        let status: u16 = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(502);
        self.response_status = status;
        self.final_status = status;
        let content_type = self
            .get_http_response_header("content-type")
            .unwrap_or_default();
        self.set_http_response_header("content-length", None);
        if (200..300).contains(&status) {
            self.set_http_response_header("content-type", Some(plan.response_content_type()));
            if plan.stream && content_type.starts_with("text/event-stream") {
                self.stream = Some(plan.response_stream(0));
                self.state = State::Streaming;
                self.set_http_response_header("cache-control", Some("no-cache"));
                if end_of_stream {
                    return Action::Continue;
                }
                return Action::Continue;
            }
            self.state = State::BufferSuccess;
        } else {
            self.state = State::BufferError;
            self.set_http_response_header("content-type", Some("application/json"));
        }
        if end_of_stream {
            // No body will follow: translate an empty body right here.
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
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        let Some(plan) = &self.plan else {
            return;
        };
        let latency = self.now_ms().saturating_sub(self.started_ms);
        let record = plan.usage_record(0, self.usage, self.final_status, 1, Some(latency));
        metrics::record(&record);
        log::info!("switchyard usage {}", record.to_json());
    }
}

impl SwitchyardHttp {
    /// Translates a complete upstream body (success or error); returns the client body.
    fn finish_buffered(&mut self, body: &[u8]) -> Vec<u8> {
        let Some(plan) = &self.plan else {
            return body.to_vec();
        };
        let status = self.response_status;
        let translated = if matches!(self.state, State::BufferSuccess) {
            plan.translate_response(0, body)
        } else {
            Err(plan.translate_error(0, status, body))
        };
        let dialect = plan.dialect;
        match translated {
            Ok((out, usage)) => {
                self.usage = usage;
                out
            }
            Err(err) => {
                let err = if err.status == 0 {
                    GatewayError::new(ErrorKind::BadGateway, err.message)
                } else {
                    err
                };
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
