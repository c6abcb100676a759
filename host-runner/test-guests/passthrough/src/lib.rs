//! A proxy-wasm filter that does nothing: every callback continues. Measuring requests
//! through it against the upstream directly gives the host's own overhead.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pass))
    }
}

struct Pass;

impl Context for Pass {}

/// Every callback keeps the SDK default: `Action::Continue`. Clients route with their own
/// `x-switchyard-cluster` header.
impl HttpContext for Pass {}
