//! `filter.wasm`: the proxy-wasm adapter over `switchyard-core`.
//!
//! Each request is one core [`Exchange`](switchyard_core::exchange::Exchange): this file
//! maps proxy-wasm callbacks to its events and performs the actions it answers with, nothing
//! else. Every decision — key checks,
//! routing, translation, fallback, health, what the client gets when something fails, the
//! metered status — is the core's (see `switchyard_core::exchange` for the rules).
//!
//! How attempts travel here: the core says which attempts may go through the router
//! ([`switchyard_core::exchange::Send::route`]); this adapter routes such an attempt when it
//! is the first (only the client's own request can be routed, once): a stream, and — only
//! where the gateway config opts in with `edge.route_complete_answers` — the last attempt of
//! a complete chat or embeddings answer. A routed attempt is the client's request rewritten
//! in place (head and body) and sent by Envoy's router (`x-switchyard-cluster`, the route's
//! `cluster_header`): a stream's answer then passes through the response callbacks chunk by
//! chunk, a complete answer is held until its end and rewritten in place (only its head, when
//! the fast path keeps the upstream's body). That saves a second HTTP exchange and a local
//! reply per request. Every other attempt — by default every complete answer; a fallback, an
//! attempt that a fallback could follow, `n` asked again, media — is a `dispatch_http_call`,
//! whose answer arrives whole: a call reports a connection that breaks mid-body as a failure,
//! which lets the core fall back or answer in the caller's dialect; the router cannot (Envoy
//! answers such a reset itself, bypassing filters — so with the opt-in, a complete answer of
//! the chain's last deployment cut mid-body gets Envoy's own error, not the dialect's 502). A
//! retryable status or a connection failure before the routed answer's head still falls back:
//! the held response is dropped and the next attempt is a call.
//!
//! After the first byte of a routed stream there is no switching. An upstream stream that
//! ends early or turns malformed is closed with an error event in the caller's dialect; an
//! upstream *reset* mid-stream (or a stall past the route's `per_try_idle_timeout`) is the
//! exception on Envoy: the router resets the client stream and calls no filter callback that
//! could still write, so the client sees a transport error.

mod control;
mod http;
mod metrics;
mod shared;
mod waiters;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use switchyard_core::Gateway;

use crate::control::{Change, ControlLink};

pub use crate::http::CLUSTER_HEADER;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(SwitchyardRoot { context_id, ..SwitchyardRoot::default() })
    });
}}

/// One per VM: holds the validated gateway configuration, and the link to the control plane.
#[derive(Default)]
struct SwitchyardRoot {
    context_id: u32,
    /// The gateway new requests use: the config's, with the control plane's keys once synced.
    gateway: Option<Rc<Gateway>>,
    /// The gateway as configured (the managed keys are applied over it).
    configured: Option<Gateway>,
    control: Option<ControlLink>,
    /// When the control link's next tick is due (the root ticks faster while streams wait).
    next_control_ms: u64,
    /// The tick period set last.
    tick: Option<std::time::Duration>,
}

/// Creates, before traffic, the shared counter records `gateway`'s limits use, so requests
/// only ever update them compare-and-swap (see [`shared::create`]).
fn create_counter_records(gateway: &Gateway) {
    for record in gateway.counter_records() {
        shared::create(&record);
    }
}

impl SwitchyardRoot {
    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn apply(&mut self, change: Option<Change>) {
        if let (Some(Change::Keys(snapshot)), Some(configured)) = (change, &self.configured) {
            let gateway = configured.with_managed_keys(snapshot);
            create_counter_records(&gateway);
            self.gateway = Some(Rc::new(gateway));
        }
    }

    fn tick_every(&mut self, period: std::time::Duration) {
        if self.tick != Some(period) {
            self.tick = Some(period);
            self.set_tick_period(period);
        }
    }

    /// Starts key sync and usage shipping when the config names a control plane.
    fn link_control_plane(&mut self, gateway: &Gateway) {
        let Some((cfg, token)) = gateway.control_plane() else {
            return;
        };
        let Some(token) = token else {
            log::error!(
                "switchyard: control_plane is configured but its token secret `{}` is not set; \
                 key sync and usage shipping are off (static keys only)",
                cfg.token_secret
            );
            return;
        };
        let nanos = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let me = format!("{nanos:x}");
        self.control = Some(ControlLink::new(cfg.clone(), token.to_string(), me));
        log::info!(
            "switchyard: syncing keys from and shipping usage to {}",
            cfg.base_url
        );
    }
}

impl Context for SwitchyardRoot {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        trailers: usize,
    ) {
        if waiters::deliver_call(self.context_id, token, num_headers, body_size, trailers) {
            return;
        }
        let status = (num_headers > 0)
            .then(|| self.get_http_call_response_header(":status"))
            .flatten()
            .and_then(|s| s.parse().ok());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let now_ms = self.now_ms();
        let change = self
            .control
            .as_mut()
            .and_then(|c| c.on_answer(token, status, &body, now_ms));
        self.apply(change);
    }
}

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
                self.link_control_plane(&gateway);
                // The tick drives key sync and usage shipping, and wakes streams that wait
                // for a saturated model's capacity.
                if self.control.is_some() || gateway.config().may_queue() {
                    self.tick_every(waiters::TICK);
                }
                create_counter_records(&gateway);
                self.configured = Some(gateway.clone());
                self.gateway = Some(Rc::new(gateway));
                true
            }
            Err(err) => {
                log::error!("switchyard: {err}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let now_ms = self.now_ms();
        let busy = waiters::wake(self.context_id, now_ms);
        self.tick_every(if busy {
            waiters::BUSY_TICK
        } else {
            waiters::TICK
        });
        if now_ms >= self.next_control_ms {
            self.next_control_ms = now_ms + control::TICK.as_millis() as u64;
            let change = self.control.as_mut().and_then(|c| c.on_tick(now_ms));
            self.apply(change);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let gateway = self.gateway.clone()?;
        Some(Box::new(http::Shell::new(gateway, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
