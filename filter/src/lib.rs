//! `filter.wasm`: the proxy-wasm adapter over `switchyard-core`.
//!
//! Each request is one core [`Exchange`]: this file maps proxy-wasm callbacks to its events
//! and performs the actions it answers with, nothing else. Every decision — key checks,
//! routing, translation, fallback, health, what the client gets when something fails, the
//! metered status — is the core's (see `switchyard_core::exchange` for the rules).
//!
//! How attempts travel here (the only choice this adapter makes, and it is about transport):
//! a *streamed* request's first attempt is the client's own request, rewritten and routed by
//! Envoy (`x-switchyard-cluster`, the route's `cluster_header`), so its answer streams through
//! the response callbacks chunk by chunk. Every other attempt — all attempts of a complete
//! (non-streamed) request, and a stream's fallbacks — is a `dispatch_http_call`, whose answer
//! arrives whole. Complete answers must be read whole anyway before anything reaches the
//! client (the answer may need translating, or be cut short and need a fallback), and a call
//! reports a connection that breaks mid-body as a failure, which lets the core fall back or
//! answer in the caller's dialect; the router path cannot (Envoy answers such a reset itself,
//! bypassing filters).
//!
//! After the first byte of a routed stream there is no switching. An upstream stream that
//! ends early or turns malformed is closed with an error event in the caller's dialect; an
//! upstream *reset* mid-stream (or a stall past the route's `per_try_idle_timeout`) is the
//! exception on Envoy: the router resets the client stream and calls no filter callback that
//! could still write, so the client sees a transport error.

mod health;
mod http;
mod metrics;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use switchyard_core::Gateway;

pub use crate::http::CLUSTER_HEADER;

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
        Some(Box::new(http::SwitchyardHttp::new(gateway, context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
