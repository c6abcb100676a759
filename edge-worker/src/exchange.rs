//! One client request: the core's [`Exchange`] driven over Spin's wasi-http.
//!
//! This file maps what happens on the wire to the exchange's events and performs the actions
//! it answers with — read the body, send an attempt, start the response, stream bytes, reply
//! — nothing else; every decision is the core's (see `switchyard_core::exchange`). Every
//! attempt is a fresh outbound request whose answer can stream, so a streamed answer reaches
//! the client chunk by chunk whichever attempt it came from. A request the core tells to wait
//! for a saturated model's capacity sleeps and retries every [`QUEUE_POLL_MS`] within this
//! instance (instances share only the key-value counters, so a freed slot goes to whichever
//! waiting instance polls first: no arrival order among waiters, only the core's rule that a
//! newcomer queues behind them).

use std::pin::pin;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::{SinkExt, Stream};
use spin_sdk::http::{
    Fields, IncomingRequest, IncomingResponse, OutgoingResponse, ResponseOutparam,
};
use switchyard_core::exchange::{Action, Ctx, Ending, Event, Exchange, Failure, ResponseHead};
use switchyard_core::tasks::edge::FORWARDED_HEADERS;
use switchyard_core::{Dialect, ErrorKind, Gateway, GatewayError, LocalReply, RequestHead};

use crate::counters::KeyValueCounters;
use crate::health::KeyValueHealth;
use crate::log;
use crate::outbound::{self, Deadline, OutboundFailure};
use crate::settings;

/// Serves one request; the answer goes to `out`.
pub async fn serve(request: IncomingRequest, out: ResponseOutparam) {
    crate::health::new_request();
    crate::counters::new_request();
    let gateway = match settings::gateway() {
        Ok(gateway) => gateway,
        Err(err) => {
            log::line(&format!("switchyard: {err}"));
            let err = GatewayError::new(ErrorKind::Internal, "the gateway is misconfigured");
            let reply = LocalReply::error(&err, Dialect::OpenAi);
            Client::Waiting(out).reply(reply).await;
            return;
        }
    };
    let gateway = crate::control::with_managed_keys(gateway).await;
    let mut host = Host {
        gateway,
        exchange: Exchange::new(),
        client: Client::Waiting(out),
        client_gone: false,
    };
    host.run(request).await;
    let ending = Ending {
        client_gone: host.client_gone,
        client_status: None,
    };
    let cx = Ctx {
        now_ms: unix_ms(),
        random: 0,
        health: &KeyValueHealth,
        counters: &KeyValueCounters,
    };
    if let Some(record) = host.exchange.finish(ending, &cx) {
        // Metering: one JSON line per request on stderr, the host's log stream, and the
        // ledger when a control plane is configured (the client has its answer by now).
        log::line(&format!("switchyard usage {}", record.to_json()));
        crate::control::ship(&host.gateway, &record).await;
    }
}

/// How often a request waiting in a model's queue looks for capacity again, ms.
const QUEUE_POLL_MS: u64 = 50;

/// The client's response body, as the SDK's sink.
type ClientBody =
    std::pin::Pin<Box<dyn futures::Sink<Vec<u8>, Error = wasi::io::streams::StreamError>>>;

/// The client side of the request.
enum Client {
    /// No response yet.
    Waiting(ResponseOutparam),
    /// A streamed response has started; its body.
    Streaming(ClientBody),
    /// Answered (or gone).
    Done,
}

impl Client {
    /// Sends a complete answer.
    async fn reply(self, reply: LocalReply) {
        let Client::Waiting(out) = self else { return };
        let response = OutgoingResponse::new(fields(&reply.headers));
        if response.set_status_code(reply.status).is_err() {
            let _ = response.set_status_code(500);
        }
        if let Err(e) = out.set_with_body(response, reply.body).await {
            log::line(&format!("switchyard: could not send the response: {e:?}"));
        }
    }
}

struct Host {
    gateway: Rc<Gateway>,
    exchange: Exchange,
    client: Client,
    client_gone: bool,
}

/// The current attempt's answer, as far as it has been read.
struct Upstream {
    response: IncomingResponse,
    /// Deadline for the whole body, or between two chunks of a stream.
    timeout_ms: u64,
}

impl Host {
    fn feed(&mut self, event: Event<'_>) -> Vec<Action> {
        let cx = Ctx {
            now_ms: unix_ms(),
            random: wasi::random::random::get_random_u64(),
            health: &KeyValueHealth,
            counters: &KeyValueCounters,
        };
        self.exchange.handle(&self.gateway, event, &cx)
    }

    async fn run(&mut self, request: IncomingRequest) {
        // The whole head in one host call, rather than one call per header the core may want
        // (each crosses the component boundary and allocates its answer in the guest).
        let entries = request.headers().entries();
        let header = |name: &str| {
            entries
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
        };
        let method = request.method().to_string();
        let path = request.path_with_query().unwrap_or_default();
        let authorization = header("authorization");
        let x_api_key = header("x-api-key");
        let x_goog_api_key = header("x-goog-api-key");
        let anthropic_version = header("anthropic-version");
        let request_id = header("x-request-id");
        let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
        let forwarded: Vec<(&str, String)> = FORWARDED_HEADERS
            .iter()
            .filter_map(|name| Some((*name, header(name)?)))
            .collect();
        let forwarded: Vec<(&str, &str)> =
            forwarded.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let head = RequestHead {
            method: &method,
            path: &path,
            authorization: authorization.as_deref(),
            x_api_key: x_api_key.as_deref(),
            x_goog_api_key: x_goog_api_key.as_deref(),
            anthropic_version: anthropic_version.as_deref(),
            content_length,
            request_id: request_id.as_deref(),
            forwarded: &forwarded,
        };
        let mut actions = self.feed(Event::RequestHead(head));
        let mut request = Some(request);
        let mut upstream: Option<Upstream> = None;
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                match action {
                    Action::ReadBody { limit } => {
                        let Some(request) = request.take() else {
                            continue;
                        };
                        next.extend(match read_request_body(request, limit).await {
                            Ok(body) => self.feed(Event::RequestBody(&body)),
                            Err(BodyError::TooLarge) => self.feed(Event::RequestBodyTooLarge),
                            Err(BodyError::Unreadable(detail)) => {
                                self.feed(Event::RequestBodyUnreadable(&detail))
                            }
                        });
                    }
                    Action::Reply(reply) => {
                        std::mem::replace(&mut self.client, Client::Done)
                            .reply(reply)
                            .await;
                    }
                    Action::Send(send) => {
                        let deadline = Deadline::after_ms(send.timeout_ms);
                        next.extend(match outbound::send(&send.request, deadline).await {
                            Ok(response) => {
                                let status = response.status();
                                let content_type =
                                    outbound::response_header(&response, "content-type");
                                let retry_after =
                                    outbound::response_header(&response, "retry-after");
                                let actions =
                                    self.feed(Event::UpstreamHead(switchyard_core::UpstreamHead {
                                        status,
                                        content_type: content_type.as_deref(),
                                        retry_after: retry_after.as_deref(),
                                        body_complete: false,
                                    }));
                                upstream = Some(Upstream {
                                    response,
                                    timeout_ms: send.timeout_ms,
                                });
                                actions
                            }
                            Err(failure) => {
                                log::line(&format!(
                                    "switchyard: request {}: attempt {} failed: {}",
                                    self.exchange.request_id(),
                                    send.attempt,
                                    failure.detail()
                                ));
                                self.feed(Event::UpstreamFailed(&failure.into_core()))
                            }
                        });
                    }
                    Action::ReadUpstreamBody => {
                        let Some(up) = upstream.take() else { continue };
                        let deadline = Deadline::after_ms(up.timeout_ms);
                        next.extend(match outbound::read_to_end(&up.response, deadline).await {
                            Ok(body) => self.feed(Event::UpstreamBody(&body)),
                            Err(failure) => self.feed(Event::UpstreamFailed(&failure.into_core())),
                        });
                    }
                    Action::StartResponse(head) => {
                        self.start_response(head);
                        let Some(up) = upstream.take() else { continue };
                        next.extend(self.stream(up, false).await);
                    }
                    Action::RelayResponse(mut head) => {
                        let Some(up) = upstream.take() else { continue };
                        // The upstream's length goes with its unchanged body, so an answer cut
                        // mid-body reaches the client as one shorter than it says, not as a
                        // complete-looking chunked one.
                        if let Some(length) =
                            outbound::response_header(&up.response, "content-length")
                        {
                            head.headers.push(("content-length".to_string(), length));
                        }
                        self.start_response(head);
                        next.extend(self.stream(up, true).await);
                    }
                    // Data and the end come from `stream`, which writes them itself.
                    Action::Data(_) | Action::EndResponse => {}
                    Action::Admit(request) => {
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
                        next.extend(self.feed(Event::AdmitAnswer(
                            answer.as_ref().map(|(s, b)| (*s, b.as_slice())),
                        )));
                    }
                    Action::Log(line) => log::line(&line),
                    Action::Wait { until_ms, .. } => {
                        // A component instance serves one request and has no signal when
                        // capacity frees elsewhere: it polls, and is answered at its bound.
                        let left = until_ms.saturating_sub(unix_ms());
                        Deadline::after_ms(left.min(QUEUE_POLL_MS)).reached().await;
                        next.extend(self.feed(Event::Retry));
                    }
                }
            }
            actions = next;
        }
    }

    fn start_response(&mut self, head: ResponseHead) {
        let Client::Waiting(out) = std::mem::replace(&mut self.client, Client::Done) else {
            return;
        };
        let response = OutgoingResponse::new(fields(&head.headers));
        // The core starts streams for 2xx answers only, and every 2xx is a valid status.
        let _ = response.set_status_code(head.status);
        let body: ClientBody = Box::pin(response.take_body());
        out.set(response);
        self.client = Client::Streaming(body);
    }

    /// Passes a streamed answer to the client chunk by chunk until the exchange ends it; a
    /// relayed one (`relay`, after `Action::RelayResponse`) passes each upstream chunk itself.
    async fn stream(&mut self, up: Upstream, relay: bool) -> Vec<Action> {
        let mut upstream = pin!(up.response.take_body_stream());
        loop {
            // Between chunks the stream may idle up to one attempt timeout, so long answers
            // are not cut while a stalled upstream still is.
            let deadline = Deadline::after_ms(up.timeout_ms);
            let actions = match outbound::next_chunk(&mut upstream, deadline).await {
                Ok(Some(chunk)) => {
                    let actions = self.feed(Event::UpstreamData(&chunk));
                    if relay && !self.send_to_client(chunk).await {
                        self.client_gone = true;
                        return actions;
                    }
                    actions
                }
                Ok(None) => self.feed(Event::UpstreamEnd),
                Err(failure) => self.feed(Event::UpstreamFailed(&failure.into_core())),
            };
            let mut rest = Vec::new();
            let mut ended = false;
            for action in actions {
                match action {
                    Action::Data(bytes) => {
                        if !self.send_to_client(bytes).await {
                            self.client_gone = true;
                            return rest;
                        }
                    }
                    Action::EndResponse => ended = true,
                    Action::Log(line) => log::line(&line),
                    other => rest.push(other),
                }
            }
            if ended {
                // Dropping the body ends the client's response.
                self.client = Client::Done;
                return rest;
            }
            if !self.exchange.streaming() {
                return rest;
            }
        }
    }

    /// Writes bytes to the client's stream; `false` when the client is gone.
    async fn send_to_client(&mut self, bytes: Vec<u8>) -> bool {
        let Client::Streaming(body) = &mut self.client else {
            return false;
        };
        if body.send(bytes).await.is_err() {
            log::line(&format!(
                "switchyard: request {}: the client went away mid-stream",
                self.exchange.request_id()
            ));
            self.client = Client::Done;
            return false;
        }
        true
    }
}

impl OutboundFailure {
    /// The exchange's view of this failure.
    fn into_core(self) -> Failure {
        match self {
            OutboundFailure::Timeout => Failure::Timeout,
            OutboundFailure::Denied(d) => Failure::NotSent(d),
            OutboundFailure::Connection(_) => Failure::ConnectionFailed,
            OutboundFailure::Reset(_) => Failure::Reset,
        }
    }
}

enum BodyError {
    TooLarge,
    Unreadable(String),
}

/// Reads the client's body, refusing it as soon as it passes `limit`.
async fn read_request_body(request: IncomingRequest, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut stream = pin!(request.into_body_stream());
    let mut body = Vec::new();
    while let Some(chunk) = next(&mut stream).await {
        let chunk = chunk.map_err(|e| BodyError::Unreadable(e.to_debug_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend(chunk);
    }
    Ok(body)
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    futures::StreamExt::next(stream).await
}

/// Header fields for a response; a header the host refuses is logged and left out.
fn fields(headers: &[(String, String)]) -> Fields {
    // All at once in one host call; only when the host refuses one are they added one by one,
    // to find and log it.
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name.clone(), value.clone().into_bytes()))
        .collect();
    if let Ok(fields) = Fields::from_list(&list) {
        return fields;
    }
    let fields = Fields::new();
    for (name, value) in &list {
        if let Err(e) = fields.append(name, value) {
            log::line(&format!(
                "switchyard: dropping response header {name}: {e:?}"
            ));
        }
    }
    fields
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
