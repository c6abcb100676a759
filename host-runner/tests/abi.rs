//! proxy-wasm ABI behaviour with the probe guest: HTTP callouts, shared data, queues,
//! metrics, ticks, properties, WASI environment, bad pointers, traps, configuration.

mod common;

use std::net::SocketAddr;

use common::*;
use host_runner::HostError;

fn addr() -> SocketAddr {
    shared_probe().listen_addr
}

#[tokio::test]
async fn dispatch_http_call_then_resume() {
    let r = get(
        addr(),
        "/dispatch?cluster=upstream",
        &[("x-target", "upstream")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The callout's response was readable (status, header, body) and the request resumed
    // with headers set from the callback (effective context switched back to the stream).
    assert!(r.body.contains("x-callout-status: 200\n"), "{}", r.body);
    assert!(
        r.body.contains("x-callout-body: pong:callout-body\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("x-callout-echo: ping\n"), "{}", r.body);
}

#[tokio::test]
async fn dispatch_http_call_then_local_reply() {
    let r = get(addr(), "/dispatch-local?cluster=upstream", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "callout 200 pong:callout-body");
}

#[tokio::test]
async fn failed_callouts_deliver_an_empty_response() {
    let r = get(
        addr(),
        "/dispatch?cluster=dead",
        &[("x-target", "upstream")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("x-callout-status: failed\n"), "{}", r.body);
}

#[tokio::test]
async fn callouts_to_unknown_clusters_are_rejected() {
    let r = get(addr(), "/dispatch-unknown", &[]).await;
    assert_eq!(r.body, "dispatch rejected: BadArgument");
}

#[tokio::test]
async fn shared_data_compare_and_swap() {
    // The probe bumps a counter with CAS and checks that the stale version is refused.
    let first = get(addr(), "/cas", &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = get(addr(), "/cas", &[]).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let n = |s: &str| s.split(' ').nth(2).unwrap().parse::<u64>().unwrap();
    assert!(n(&second.body) > n(&first.body));
}

#[tokio::test]
async fn shared_queue_wakes_its_owner() {
    for item in ["q1", "q2"] {
        let r = get(addr(), &format!("/queue?item={item}"), &[]).await;
        assert_eq!(r.body, "queued");
    }
    // on_queue_ready on the registering root context drains the queue into shared data.
    eventually(|| async {
        let r = get(addr(), "/shared?key=queue_log", &[]).await;
        (r.body.contains("q1") && r.body.contains("q2")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format() {
    let r = get(addr(), "/metric", &[]).await;
    assert!(r.body.starts_with("requests="), "{}", r.body);
    let admin = shared_probe().admin_addr.unwrap();
    let m = get(admin, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let requests: u64 = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("probe_requests "))
        .expect("probe_requests counter")
        .parse()
        .unwrap();
    assert!(requests >= 1);
    assert!(m.body.contains("# TYPE probe_requests counter\n"));
    assert!(m
        .body
        .contains("# TYPE probe_request_body_bytes histogram\n"));
    assert!(m
        .body
        .contains("probe_request_body_bytes_bucket{le=\"+Inf\"}"));
    assert!(m.body.contains("# TYPE probe_gauge gauge\n"));
    assert!(
        m.body.lines().any(|l| l.starts_with("probe_gauge -")),
        "{}",
        m.body
    );
    let ready = get(admin, "/ready", &[]).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "LIVE\n"));
}

#[tokio::test]
async fn properties_and_vm_configuration() {
    let r = get(addr(), "/props", &[]).await;
    assert_eq!(
        r.body,
        "path=/props method=GET plugin=switchyard vm_config=vm-config-bytes missing=<none>"
    );
}

#[tokio::test]
async fn out_of_bounds_pointers_are_errors_not_crashes() {
    let r = get(addr(), "/oob", &[]).await;
    // get_buffer_bytes, log, get_header_map_pairs → InvalidMemoryAccess (6);
    // set_effective_context(unknown) → BadArgument (2).
    assert_eq!(r.body, "oob 6 6 6 2");
    assert_eq!(get(addr(), "/local", &[]).await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_fails_one_request_and_the_next_one_works() {
    let mut config = probe_config("");
    config.workers = 1;
    let server = host_runner::start(config).await.unwrap();
    let before = get(server.listen_addr, "/local", &[]).await;
    assert_eq!(before.status, 403);
    let r = get(server.listen_addr, "/trap", &[]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "wasm filter failed\n");
    // Same (only) worker, fresh instance: configured again and serving.
    let after = get(server.listen_addr, "/headers", &[("x-target", "upstream")]).await;
    assert_eq!(after.status, 200, "{}", after.body);
    let m = get(server.admin_addr.unwrap(), "/metrics", &[]).await;
    assert!(m.body.contains("host_runner_wasm_traps 1\n"), "{}", m.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_fire_on_the_root_context() {
    let server = host_runner::start(probe_config("tick")).await.unwrap();
    let addr = server.listen_addr;
    eventually(|| async {
        let r = get(addr, "/shared?key=ticks", &[]).await;
        (r.body.parse::<u64>().unwrap_or(0) >= 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_environment_reaches_the_guest() {
    let mut config = probe_config("");
    config.env = vec![("PROBE_SECRET".into(), "s3cr3t".into())];
    let server = host_runner::start(config).await.unwrap();
    let r = get(server.listen_addr, "/env", &[]).await;
    assert_eq!(r.body, "secret=s3cr3t home=<unset> vars=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_configuration_refuses_to_start() {
    let err = host_runner::start(probe_config("reject"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, HostError::ConfigureRejected), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_modules_are_clear_errors() {
    let mut config = probe_config("");
    config.wasm = b"not wasm".to_vec();
    let err = host_runner::start(config).await.err().unwrap();
    assert!(matches!(err, HostError::InvalidWasm(_)), "{err}");

    let mut config = probe_config("");
    config.wasm = br#"(module (memory (export "memory") 1))"#.to_vec();
    let err = host_runner::start(config).await.err().unwrap();
    assert!(matches!(err, HostError::NotProxyWasm(_)), "{err}");
}

/// A hand-written guest that imports a proxy-wasm function this host does not know: it
/// still loads, and the call answers Unimplemented (12) instead of trapping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_proxy_imports_answer_unimplemented() {
    let wat = r#"
      (module
        (import "env" "proxy_get_header_map_size" (func $size (param i32 i32) (result i32)))
        (import "env" "proxy_send_local_response"
          (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 100) "12")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) (i32.const 1024))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          ;; reply 200 with body "12" if the unknown import returned 12
          (if (i32.eq (call $size (i32.const 0) (i32.const 200)) (i32.const 12))
            (then (drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0)
                                     (i32.const 100) (i32.const 2) (i32.const 0) (i32.const 0)
                                     (i32.const -1))))
            (else (drop (call $reply (i32.const 500) (i32.const 0) (i32.const 0)
                                     (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                     (i32.const -1)))))
          (i32.const 1)))
    "#;
    let mut config = probe_config("");
    config.wasm = wat.as_bytes().to_vec();
    let server = host_runner::start(config).await.unwrap();
    let r = get(server.listen_addr, "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "12"));
}

/// A guest stuck in a loop is interrupted after the guest timeout: that request fails with
/// 500 and the runner keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_guest_is_interrupted() {
    let wat = r#"
      (module
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param i32) (result i32) (i32.const 1024))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          (loop $spin (br $spin))
          (i32.const 0)))
    "#;
    let mut config = probe_config("");
    config.wasm = wat.as_bytes().to_vec();
    config.guest_timeout = std::time::Duration::from_millis(200);
    let server = host_runner::start(config).await.unwrap();
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = get(server.listen_addr, "/", &[]).await;
        assert_eq!(r.status, 500);
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }
}

#[tokio::test]
async fn unsupported_features_answer_statuses_the_sdk_handles() {
    let r = get(addr(), "/unsupported", &[]).await;
    assert_eq!(
        r.body,
        "foreign=Err(NotFound) grpc=Err(InternalFailure) status=0 None"
    );
}

#[tokio::test]
async fn close_stream_resets_the_request() {
    let req = http::Request::builder()
        .uri(format!("http://{}/close", addr()))
        .body(host_runner::body::HostBody::empty())
        .unwrap();
    assert!(client().request(req).await.is_err());
    // The worker is fine afterwards.
    assert_eq!(get(addr(), "/local", &[]).await.status, 403);
}

/// A C-style guest that exports `malloc` (not `proxy_on_memory_allocate`): returned data is
/// placed in memory from its allocator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malloc_is_used_as_the_guest_allocator() {
    let wat = r#"
      (module
        (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
        (import "env" "proxy_send_local_response"
          (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 4096))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "malloc") (param $n i32) (result i32)
          (local $p i32)
          (local.set $p (global.get $next))
          (global.set $next (i32.add (global.get $next) (local.get $n)))
          (local.get $p))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
          ;; read the plugin configuration (buffer type 7) and answer with it
          (drop (call $get (i32.const 7) (i32.const 0) (i32.const 1000) (i32.const 100) (i32.const 104)))
          (drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0)
                             (i32.load (i32.const 100)) (i32.load (i32.const 104))
                             (i32.const 0) (i32.const 0) (i32.const -1)))
          (i32.const 1)))
    "#;
    let mut config = probe_config("config-via-malloc");
    config.wasm = wat.as_bytes().to_vec();
    let server = host_runner::start(config).await.unwrap();
    let r = get(server.listen_addr, "/", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "config-via-malloc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_and_bad_entries_replaced() {
    let dir = std::env::temp_dir().join(format!("host-runner-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = probe_config("");
    config.cache_dir = Some(dir.clone());
    let cached = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect()
    };
    for round in 0..3 {
        if round == 1 {
            // A corrupt entry is ignored and rewritten.
            std::fs::write(&cached()[0], b"garbage").unwrap();
        }
        let server = host_runner::start(config.clone()).await.unwrap();
        assert_eq!(get(server.listen_addr, "/local", &[]).await.status, 403);
        assert_eq!(cached().len(), 1, "round {round}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
