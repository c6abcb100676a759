//! One client request through the gateway, with the Envoy filter's fallback rules.
//!
//! The phases are the core's: [`Gateway::on_request_head`], [`Gateway::plan`], then one
//! [`Plan::upstream_request`] per attempt. An attempt that fails before any byte reached the
//! client — connection failure, timeout, or a status the plan retries on — is recorded and the
//! next deployment is tried with the request re-translated for it. Once a streamed answer has
//! started, a failure ends the stream with the dialect's error event instead. When every
//! attempt failed, the client gets one error in its dialect listing them, and every answer
//! carries `x-switchyard-attempts`.

use std::pin::pin;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::SinkExt;
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, OutgoingResponse, ResponseOutparam,
};
use switchyard_core::attempts::{AttemptLog, Outcome, ATTEMPTS_HEADER};
use switchyard_core::canonical::TokenUsage;
use switchyard_core::{
    Dialect, ErrorKind, Gateway, GatewayError, HeadOutcome, LocalReply, Plan, RequestHead,
};

use crate::health::{self, InstanceHealth};
use crate::outbound::{self, Deadline, Failure};
use crate::settings;

/// Serves one request; the answer goes to `out`.
pub async fn serve(request: IncomingRequest, out: ResponseOutparam) {
    let gateway = match settings::load_gateway() {
        Ok(gateway) => gateway,
        Err(err) => {
            eprintln!("switchyard: {err}");
            let err = GatewayError::new(ErrorKind::Internal, "the gateway is misconfigured");
            send_reply(out, LocalReply::error(&err, Dialect::OpenAi), "").await;
            return;
        }
    };
    let mut exchange = Exchange::new();
    let plan = exchange.admit(&gateway, request).await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(reply) => {
            send_reply(out, reply, "").await;
            return;
        }
    };
    exchange.forward(&plan, out).await;
    let record = plan.usage_record(
        exchange.attempt,
        exchange.usage,
        exchange.final_status,
        exchange.attempts.count(),
        Some(exchange.elapsed_ms()),
    );
    // Metering: one JSON line per request on stderr, the host's log stream.
    eprintln!("switchyard usage {}", record.to_json());
}

/// What is known about the request as it proceeds.
struct Exchange {
    started: Instant,
    /// Index into `plan.attempts` of the attempt in flight / that answered.
    attempt: usize,
    attempt_started: Instant,
    attempts: AttemptLog,
    usage: TokenUsage,
    final_status: u16,
}

impl Exchange {
    fn new() -> Self {
        let now = Instant::now();
        Exchange {
            started: now,
            attempt: 0,
            attempt_started: now,
            attempts: AttemptLog::default(),
            usage: TokenUsage::default(),
            final_status: 0,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Header checks, body read and planning; `Err` is the local answer.
    async fn admit(&self, gateway: &Gateway, request: IncomingRequest) -> Result<Plan, LocalReply> {
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .into_iter()
                .next()
                .and_then(|v| String::from_utf8(v).ok())
        };
        let method = request.method().to_string();
        let path = request.path_with_query().unwrap_or_default();
        let authorization = header("authorization");
        let x_api_key = header("x-api-key");
        let anthropic_version = header("anthropic-version");
        let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
        let head = RequestHead {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
            x_api_key: x_api_key.as_deref(),
            anthropic_version: anthropic_version.as_deref(),
            content_length,
        };
        let admitted = match gateway.on_request_head(&head, unix_ms() / 1000) {
            HeadOutcome::Reply(reply) => return Err(reply),
            HeadOutcome::ReadBody(admitted) => admitted,
        };
        let dialect = admitted.dialect;
        let body = read_request_body(gateway, request)
            .await
            .map_err(|err| LocalReply::error(&err, dialect))?;
        if body.is_empty() {
            let err = GatewayError::invalid("request body is required");
            return Err(LocalReply::error(&err, dialect));
        }
        let health = InstanceHealth { now_ms: unix_ms() };
        let random = wasi::random::random::get_random_u64();
        gateway
            .plan(&admitted, &body, random, unix_ms() / 1000, &health)
            .map_err(|err| LocalReply::error(&err, dialect))
    }

    fn deployment(&self, plan: &Plan) -> String {
        plan.attempts
            .get(self.attempt)
            .map(|a| a.deployment_id.clone())
            .unwrap_or_default()
    }

    fn log_attempt(&mut self, plan: &Plan, outcome: Outcome) {
        let millis = self.attempt_started.elapsed().as_millis() as u64;
        let deployment = self.deployment(plan);
        self.attempts.push(deployment, outcome, millis);
    }

    fn mark_failure(&mut self, plan: &Plan, outcome: Outcome) {
        health::record_failure(&self.deployment(plan), &plan.fallback, unix_ms());
        self.log_attempt(plan, outcome);
    }

    fn mark_success(&mut self, plan: &Plan, status: u16) {
        let latency = self.attempt_started.elapsed().as_millis() as u64;
        health::record_success(&self.deployment(plan), latency);
        self.log_attempt(plan, Outcome::Status(status));
    }

    /// Whether another attempt may start: one is left and the total budget is not spent.
    fn can_fall_back(&self, plan: &Plan) -> bool {
        self.attempt + 1 < plan.attempts.len() && self.elapsed_ms() < plan.fallback.total_timeout_ms
    }

    /// Walks the attempt chain until one attempt answers, and answers the client.
    async fn forward(&mut self, plan: &Plan, out: ResponseOutparam) {
        loop {
            self.attempt_started = Instant::now();
            match self.try_attempt(plan).await {
                Step::Answer(response) => return self.answer(plan, response, out).await,
                Step::Reply(reply) => {
                    self.final_status = reply.status;
                    let attempts = self.attempts.header_value();
                    return send_reply(out, reply, &attempts).await;
                }
                Step::Failed(outcome) => {
                    self.mark_failure(plan, outcome);
                    if !self.can_fall_back(plan) {
                        let reply = self.all_failed(plan.dialect);
                        self.final_status = reply.status;
                        let attempts = self.attempts.header_value();
                        return send_reply(out, reply, &attempts).await;
                    }
                    self.attempt += 1;
                }
            }
        }
    }

    /// Sends the current attempt and classifies its answer.
    async fn try_attempt(&mut self, plan: &Plan) -> Step {
        let upstream = match plan.upstream_request(self.attempt) {
            Ok(upstream) => upstream,
            // As the filter does: a primary that cannot be built is the answer; a fallback
            // that cannot be built is skipped.
            Err(err) if self.attempt == 0 => {
                eprintln!("switchyard: {}", err.message);
                return Step::Reply(LocalReply::error(&err, plan.dialect));
            }
            Err(err) => {
                eprintln!("switchyard: {}", err.message);
                return Step::Failed(Outcome::NotSent(err.message.clone()));
            }
        };
        let remaining = plan
            .fallback
            .total_timeout_ms
            .saturating_sub(self.elapsed_ms());
        let deadline = Deadline::after_ms(upstream.timeout_ms.min(remaining).max(1));
        let response = match outbound::send(&upstream, deadline).await {
            Ok(response) => response,
            Err(failure) => {
                eprintln!(
                    "switchyard: attempt {} to {} failed: {}",
                    self.attempt,
                    self.deployment(plan),
                    failure.detail()
                );
                return Step::Failed(failure.outcome());
            }
        };
        let status = response.status();
        // A retryable status moves on while another attempt is left; the primary's final
        // retryable answer is translated like any error (the filter has already passed it on),
        // a fallback's becomes the all-failed error.
        if plan.should_retry_status(status) && (self.attempt > 0 || self.can_fall_back(plan)) {
            return Step::Failed(Outcome::Status(status));
        }
        let streamed = plan.stream
            && (200..300).contains(&status)
            && outbound::response_header(&response, "content-type")
                .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if streamed {
            return Step::Answer(Answer {
                status,
                response,
                deadline_ms: upstream.timeout_ms,
            });
        }
        let body = match outbound::read_to_end(&response, deadline).await {
            Ok(body) => body,
            // Nothing has reached the client yet, so a body that never completes is a failed
            // attempt like any other.
            Err(failure) => return Step::Failed(failure.outcome()),
        };
        if !(200..300).contains(&status) {
            if plan.should_retry_status(status) {
                self.mark_failure(plan, Outcome::Status(status));
            } else {
                // A final answer: the deployment is healthy, the request is not.
                self.log_attempt(plan, Outcome::Status(status));
            }
            let err = plan.translate_error(self.attempt, status, &body);
            let mut reply = LocalReply::error(&err, plan.dialect);
            // The provider's own back-off hint reaches the client, as through Envoy, unless the
            // translated error carries one.
            if err.retry_after.is_none() {
                if let Some(retry_after) = outbound::response_header(&response, "retry-after") {
                    reply.headers.push(("retry-after".into(), retry_after));
                }
            }
            return Step::Reply(reply);
        }
        self.mark_success(plan, status);
        match plan.translate_response(self.attempt, &body) {
            Ok((out, usage)) => {
                self.usage = usage;
                Step::Reply(LocalReply {
                    status,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: out,
                })
            }
            Err(err) => Step::Reply(LocalReply::error(&err, plan.dialect)),
        }
    }

    /// Streams a successful SSE answer to the client, translating chunk by chunk.
    async fn answer(&mut self, plan: &Plan, answer: Answer, out: ResponseOutparam) {
        self.mark_success(plan, answer.status);
        self.final_status = answer.status;
        let headers = vec![
            (
                "content-type".to_string(),
                plan.response_content_type().to_string(),
            ),
            ("cache-control".to_string(), "no-cache".to_string()),
            (ATTEMPTS_HEADER.to_string(), self.attempts.header_value()),
        ];
        let response = OutgoingResponse::new(fields(&headers));
        // Only a 2xx gets here, and every 2xx is a valid status code.
        let _ = response.set_status_code(answer.status);
        let mut client = response.take_body();
        out.set(response);

        let mut translator = plan.response_stream(self.attempt);
        let mut upstream = pin!(answer.response.take_body_stream());
        loop {
            // Between chunks the stream may idle up to one attempt timeout, so long answers
            // are not cut while a stalled upstream still is.
            let deadline = Deadline::after_ms(answer.deadline_ms);
            let (bytes, done) = match outbound::next_chunk(&mut upstream, deadline).await {
                Ok(Some(chunk)) => (translator.push(&chunk), false),
                Ok(None) => (translator.finish(), true),
                Err(failure) => {
                    eprintln!(
                        "switchyard: stream from {} failed: {}",
                        self.deployment(plan),
                        failure.detail()
                    );
                    (
                        translator.fail(&stream_error(&failure, answer.deadline_ms)),
                        true,
                    )
                }
            };
            if !bytes.is_empty() && client.send(bytes).await.is_err() {
                eprintln!("switchyard: client went away mid-stream");
                self.final_status = 499;
                break;
            }
            if done {
                break;
            }
        }
        self.usage = translator.usage();
        if translator.failed() {
            self.final_status = 502;
        }
    }

    /// The one error for a request whose every attempt failed.
    fn all_failed(&self, dialect: Dialect) -> LocalReply {
        LocalReply::error(&self.attempts.all_failed(), dialect)
    }
}

/// What one attempt came to.
enum Step {
    /// A successful stream to pass on.
    Answer(Answer),
    /// A complete answer for the client (success or final error).
    Reply(LocalReply),
    /// The attempt failed before answering; the outcome says how.
    Failed(Outcome),
}

/// A successful streamed answer whose body has not been read yet.
struct Answer {
    status: u16,
    response: IncomingResponse,
    deadline_ms: u64,
}

fn stream_error(failure: &Failure, idle_ms: u64) -> GatewayError {
    match failure {
        Failure::Timeout => GatewayError::new(
            ErrorKind::Timeout,
            format!("upstream stream stalled for more than {idle_ms} ms"),
        ),
        other => GatewayError::new(
            ErrorKind::BadGateway,
            format!("upstream stream failed: {}", other.outcome()),
        ),
    }
}

/// Reads the client's body, refusing it as soon as it passes the size limit.
async fn read_request_body(
    gateway: &Gateway,
    request: IncomingRequest,
) -> Result<Vec<u8>, GatewayError> {
    let limit = gateway.max_request_bytes();
    let mut stream = pin!(request.into_body_stream());
    let mut body = Vec::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| {
            GatewayError::invalid(format!(
                "cannot read the request body: {}",
                e.to_debug_string()
            ))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(gateway.too_large());
        }
        body.extend(chunk);
    }
    Ok(body)
}

/// Header fields for a response; a header the host refuses is logged and left out.
fn fields(headers: &[(String, String)]) -> Fields {
    let fields = Fields::new();
    for (name, value) in headers {
        if value.is_empty() {
            continue;
        }
        if let Err(e) = fields.append(name, &value.clone().into_bytes()) {
            eprintln!("switchyard: dropping response header {name}: {e:?}");
        }
    }
    fields
}

/// Sends a complete answer.
async fn send_reply(out: ResponseOutparam, reply: LocalReply, attempts: &str) {
    let mut headers = reply.headers;
    headers.push((ATTEMPTS_HEADER.to_string(), attempts.to_string()));
    let response = OutgoingResponse::new(fields(&headers));
    if response.set_status_code(reply.status).is_err() {
        let _ = response.set_status_code(500);
    }
    if let Err(e) = out.set_with_body(response, reply.body).await {
        eprintln!("switchyard: could not send the response: {e:?}");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
