//! Times `switchyard-core`'s translation cases (`filter/core/benches/translate_cases`, the
//! criterion bench's very closures) inside a wasm host, built like `filter.wasm` (same
//! workspace profile, `wasm32-wasip1`). A benchmark tool, not part of the shipped filter.
//!
//! Each request runs the case named by `x-bench-case` (default: every case) `x-bench-n` times
//! (default 1000) after one untimed iteration, timed with the host's clock
//! (`proxy_get_current_time_nanoseconds`), and answers 200 with one line per case:
//! `<name> <ns per iteration>`. Driven by `tests/bench/xlate_wasm.py` under Envoy (V8) and
//! host-runner (wasmtime).

use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

#[path = "../../core/benches/translate_cases/mod.rs"]
mod translate_cases;

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
        Some(Box::new(Bench))
    }
}

struct Bench;

impl Context for Bench {}

impl Bench {
    /// The host's wall clock in nanoseconds.
    fn now_ns(&self) -> u128 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    }
}

impl HttpContext for Bench {
    fn on_http_request_headers(&mut self, _headers: usize, _eos: bool) -> Action {
        let which = self
            .get_http_request_header("x-bench-case")
            .unwrap_or_else(|| "all".into());
        let n: u32 = self
            .get_http_request_header("x-bench-n")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000)
            .max(1);
        let mut report = String::new();
        let mut checksum = 0usize;
        for (name, mut run) in translate_cases::cases() {
            if which != "all" && which != name {
                continue;
            }
            checksum = checksum.wrapping_add(run());
            let start = self.now_ns();
            for _ in 0..n {
                checksum = checksum.wrapping_add(run());
            }
            let per_iteration = (self.now_ns() - start) / u128::from(n);
            report.push_str(&format!("{name} {per_iteration}\n"));
        }
        let (status, body) = if report.is_empty() {
            (404, format!("no case named {which}\n"))
        } else {
            (200, report)
        };
        let checksum = checksum.to_string();
        self.send_http_response(
            status,
            vec![
                ("content-type", "text/plain"),
                ("x-bench-checksum", checksum.as_str()),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
