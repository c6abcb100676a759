//! A proxy-wasm test filter for host-runner. Behaviour is chosen by the request path so one
//! module exercises the whole ABI; every path answers with something a test can assert.
//!
//! Routing: the `x-target` request header, when present, becomes `x-switchyard-cluster`.
//! Plugin configuration words: `reject` (on_configure returns false), `tick` (20 ms ticks
//! that count into shared data `ticks`).

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    vm_config: String,
    queue: u32,
    requests: u32,
    body_sizes: u32,
    logged: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.vm_config = self
            .get_vm_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        log::info!("probe configured with {config:?}");
        if config.split_whitespace().any(|w| w == "reject") {
            log::error!("probe rejects its configuration");
            return false;
        }
        if config.split_whitespace().any(|w| w == "tick") {
            self.set_tick_period(Duration::from_millis(20));
        }
        self.queue = self.register_shared_queue("probe_queue");
        self.requests = hostcalls::define_metric(MetricType::Counter, "probe.requests").unwrap();
        self.body_sizes =
            hostcalls::define_metric(MetricType::Histogram, "probe.request_body_bytes").unwrap();
        self.logged = hostcalls::define_metric(MetricType::Counter, "probe.logged").unwrap();
        hostcalls::define_metric(MetricType::Gauge, "probe.gauge").unwrap();
        true
    }

    fn on_tick(&mut self) {
        let (value, cas) = self.get_shared_data("ticks");
        let n: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let _ = self.set_shared_data("ticks", Some((n + 1).to_string().as_bytes()), cas);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            let (value, cas) = self.get_shared_data("queue_log");
            let mut log = value.unwrap_or_default();
            if !log.is_empty() {
                log.push(b',');
            }
            log.extend_from_slice(&item);
            let _ = self.set_shared_data("queue_log", Some(&log), cas);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            id: context_id,
            path: String::new(),
            order: Vec::new(),
            metrics: (self.requests, self.body_sizes, self.logged),
            vm_config: self.vm_config.clone(),
        }))
    }
}

struct Probe {
    id: u32,
    path: String,
    /// The callbacks seen, stored in shared data `order:<path>` at on_log and on_done.
    order: Vec<String>,
    metrics: (u32, u32, u32),
    vm_config: String,
}

extern "C" {
    // Raw imports, to hand the host deliberately bad pointers.
    #[link_name = "proxy_get_buffer_bytes"]
    fn raw_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        ret_ptr: *mut *mut u8,
        ret_len: *mut usize,
    ) -> u32;
    #[link_name = "proxy_log"]
    fn raw_log(level: u32, ptr: *const u8, len: usize) -> u32;
    #[link_name = "proxy_get_header_map_pairs"]
    fn raw_get_map_pairs(kind: u32, ret_ptr: *mut *mut u8, ret_len: *mut usize) -> u32;
    #[link_name = "proxy_set_effective_context"]
    fn raw_set_effective_context(id: u32) -> u32;
}

impl Probe {
    fn reply(&self, status: u32, body: &str) -> Action {
        self.send_http_response(status, vec![("x-probe-local", "1")], Some(body.as_bytes()));
        Action::Pause
    }

    fn query(&self, key: &str) -> Option<String> {
        let (_, q) = self.path.split_once('?')?;
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    }

    fn save_order(&self) {
        let key = format!("order:{}", self.path);
        let _ = self.set_shared_data(&key, Some(self.order.join(",").as_bytes()), None);
    }
}

impl Context for Probe {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.order.push("call_response".into());
        let status = if num_headers == 0 {
            "failed".to_string()
        } else {
            self.get_http_call_response_header(":status")
                .unwrap_or_default()
        };
        let body = self
            .get_http_call_response_body(0, body_size)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let echo = self
            .get_http_call_response_header("x-echo")
            .unwrap_or_default();
        if self.path.starts_with("/dispatch-local") {
            self.send_http_response(
                200,
                vec![],
                Some(format!("callout {status} {body}").as_bytes()),
            );
            return;
        }
        self.set_http_request_header("x-callout-status", Some(&status));
        self.set_http_request_header("x-callout-body", Some(&body));
        self.set_http_request_header("x-callout-echo", Some(&echo));
        self.resume_http_request();
    }

    fn on_done(&mut self) -> bool {
        self.order.push("done".into());
        self.save_order();
        true
    }
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _num: usize, eos: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        self.order.push(format!("request_headers(eos={eos})"));
        let _ = hostcalls::increment_metric(self.metrics.0, 1);
        if let Some(target) = self.get_http_request_header("x-target") {
            self.set_http_request_header("x-switchyard-cluster", Some(&target));
        }
        let path = self.path.clone();
        let route = path.split('?').next().unwrap_or("");
        match route {
            "/headers" => {
                self.set_http_request_header("x-added", Some("yes"));
                self.add_http_request_header("x-multi", "a");
                self.add_http_request_header("x-multi", "b");
                self.remove_http_request_header("x-remove-me");
                self.set_http_request_header(":path", Some("/rewritten?q=1"));
                self.set_http_request_header(":method", Some("PUT"));
                self.set_http_request_header(":authority", Some("rewritten.example"));
                Action::Continue
            }
            "/buffer" | "/buffer-continue" => Action::Pause,
            "/local" => self.reply(403, "denied by probe"),
            "/trap" => panic!("probe was asked to trap"),
            "/dispatch" | "/dispatch-local" => {
                let cluster = self.query("cluster").unwrap_or_else(|| "upstream".into());
                match self.dispatch_http_call(
                    &cluster,
                    vec![
                        (":method", "POST"),
                        (":path", "/callout"),
                        (":authority", "callout"),
                        ("x-echo", "ping"),
                    ],
                    Some(b"callout-body"),
                    vec![],
                    Duration::from_millis(2000),
                ) {
                    Ok(_) => Action::Pause,
                    Err(s) => self.reply(500, &format!("dispatch failed: {s:?}")),
                }
            }
            "/dispatch-unknown" => match self.dispatch_http_call(
                "no-such-cluster",
                vec![(":method", "GET"), (":path", "/"), (":authority", "x")],
                None,
                vec![],
                Duration::from_millis(100),
            ) {
                Ok(_) => self.reply(500, "dispatch to an unknown cluster succeeded"),
                Err(s) => self.reply(200, &format!("dispatch rejected: {s:?}")),
            },
            "/cas" => {
                if self.get_shared_data("cas_key").1.is_none() {
                    let _ = self.set_shared_data("cas_key", Some(b"0"), None);
                }
                let (value, cas) = self.get_shared_data("cas_key");
                let n: u64 = value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let first =
                    self.set_shared_data("cas_key", Some((n + 1).to_string().as_bytes()), cas);
                // The version moved on: the same CAS must now fail.
                let stale = self.set_shared_data("cas_key", Some(b"stale"), cas);
                match (first, stale) {
                    (Ok(()), Err(Status::CasMismatch)) => {
                        self.reply(200, &format!("cas ok {}", n + 1))
                    }
                    other => self.reply(500, &format!("cas broken: {other:?}")),
                }
            }
            "/queue" => {
                let item = self.query("item").unwrap_or_default();
                let Some(id) = self.resolve_shared_queue("", "probe_queue") else {
                    return self.reply(500, "queue not found");
                };
                match self.enqueue_shared_queue(id, Some(item.as_bytes())) {
                    Ok(()) => self.reply(200, "queued"),
                    Err(s) => self.reply(500, &format!("enqueue failed: {s:?}")),
                }
            }
            "/shared" => {
                let key = self.query("key").unwrap_or_default();
                let (value, _) = self.get_shared_data(&key);
                let value = value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                self.reply(200, &value)
            }
            "/env" => {
                let secret = std::env::var("PROBE_SECRET").unwrap_or_else(|_| "<unset>".into());
                let home = std::env::var("HOME").map_or("<unset>".to_string(), |_| "<set>".into());
                let count = std::env::vars().count();
                self.reply(200, &format!("secret={secret} home={home} vars={count}"))
            }
            "/props" => {
                let prop = |p: Vec<&str>| {
                    self.get_property(p)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_else(|| "<none>".into())
                };
                let body = format!(
                    "path={} method={} plugin={} vm_config={} missing={}",
                    prop(vec!["request", "path"]),
                    prop(vec!["request", "method"]),
                    prop(vec!["plugin_name"]),
                    self.vm_config,
                    prop(vec!["no", "such"]),
                );
                self.reply(200, &body)
            }
            "/oob" => {
                let bad = 0xFFFF_FFF0usize as *mut *mut u8;
                let mut len = 0usize;
                let mut ptr = std::ptr::null_mut();
                let s1 = unsafe { raw_get_buffer_bytes(7, 0, 10, bad, &mut len) };
                let s2 = unsafe { raw_log(2, 0xFFFF_FFF0usize as *const u8, 64) };
                let s3 = unsafe { raw_get_map_pairs(0, &mut ptr, 0xFFFF_FFFEusize as *mut usize) };
                let s4 = unsafe { raw_set_effective_context(999_999) };
                self.reply(200, &format!("oob {s1} {s2} {s3} {s4}"))
            }
            "/unsupported" => {
                let foreign = self.call_foreign_function("no_such_function", None);
                let grpc = self.dispatch_grpc_call(
                    "upstream",
                    "svc",
                    "Method",
                    vec![],
                    None,
                    Duration::from_millis(100),
                );
                let (code, message) = self.get_grpc_status();
                self.reply(
                    200,
                    &format!("foreign={foreign:?} grpc={grpc:?} status={code} {message:?}"),
                )
            }
            "/close" => {
                self.reset_http_request();
                Action::Pause
            }
            "/metric" => {
                let gauge = hostcalls::define_metric(MetricType::Gauge, "probe.gauge").unwrap();
                let _ = hostcalls::increment_metric(gauge, -5);
                let requests = hostcalls::get_metric(self.metrics.0).unwrap_or(0);
                self.reply(200, &format!("requests={requests}"))
            }
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        self.order.push(format!("request_body({size},eos={eos})"));
        let _ = hostcalls::record_metric(self.metrics.1, size as u64);
        let route = self.path.split('?').next().unwrap_or("").to_string();
        match route.as_str() {
            "/buffer" => {
                if !eos {
                    return Action::Pause;
                }
                let body = self.get_http_request_body(0, size).unwrap_or_default();
                let mut new = String::from_utf8_lossy(&body).to_uppercase();
                new.push_str("+filtered");
                self.set_http_request_body(0, size, new.as_bytes());
                self.set_http_request_header("x-body-seen", Some(&size.to_string()));
                Action::Continue
            }
            // Headers were paused; a Continue from the body resumes them (Envoy semantics).
            "/buffer-continue" => Action::Continue,
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num: usize, eos: bool) -> Action {
        self.order.push(format!("response_headers(eos={eos})"));
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-probe-response-status", Some(&status));
        self.set_http_response_header("x-probe-context", Some(&self.id.to_string()));
        if self.path.starts_with("/upper-response") {
            // Chunks change size while streaming: the declared length would be wrong.
            self.set_http_response_header("content-length", None);
        }
        if self.path.starts_with("/wrap-response") {
            // Hold the headers until the body is complete, like a buffering filter.
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        self.order.push(format!("response_body({size},eos={eos})"));
        if self.path.starts_with("/upper-response") {
            let chunk = self.get_http_response_body(0, size).unwrap_or_default();
            let upper = String::from_utf8_lossy(&chunk).to_uppercase();
            self.set_http_response_body(0, size, upper.as_bytes());
            return Action::Continue;
        }
        if self.path.starts_with("/wrap-response") {
            if !eos {
                return Action::Pause;
            }
            let body = self.get_http_response_body(0, size).unwrap_or_default();
            let wrapped = format!("[{}]", String::from_utf8_lossy(&body));
            self.set_http_response_body(0, size, wrapped.as_bytes());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.order.push("log".into());
        let _ = hostcalls::increment_metric(self.metrics.2, 1);
        self.save_order();
    }
}
