//! HTTP behaviour through host-runner with the probe guest: routing, header and body
//! rewriting, buffering, local replies, streaming, upstream failures, callback order.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use host_runner::body::{Chunk, HostBody};
use http_body_util::BodyExt;

fn addr() -> std::net::SocketAddr {
    shared_probe().listen_addr
}

#[tokio::test]
async fn rewrites_headers_and_routes_by_cluster_header() {
    let r = get(
        addr(),
        "/headers",
        &[
            ("x-target", "upstream"),
            ("x-remove-me", "1"),
            ("x-keep", "k"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut lines = r.body.lines();
    // :method and :path rewrites reach the upstream.
    assert_eq!(lines.next(), Some("PUT /rewritten?q=1"));
    assert!(r.body.contains("host: rewritten.example\n"), "{}", r.body);
    assert!(r.body.contains("x-added: yes\n"));
    assert!(r.body.contains("x-multi: a\nx-multi: b\n"));
    assert!(r.body.contains("x-keep: k\n"));
    assert!(r.body.contains("x-request-id: "));
    assert!(!r.body.contains("x-remove-me"));
    // The routing header is consumed by the host, never forwarded.
    assert!(!r.body.contains("x-switchyard-cluster"));
    // The response passed through on_http_response_headers.
    assert_eq!(r.header("x-probe-response-status"), Some("200"));
}

#[tokio::test]
async fn buffers_the_request_body_and_fixes_content_length() {
    // Send the body in several chunks with pauses, as a slow client would.
    let (tx, body) = HostBody::channel();
    tokio::spawn(async move {
        for part in ["hello ", "wor", "ld"] {
            tx.send(Chunk::Data(Bytes::from(part))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        tx.send(Chunk::End).await.unwrap();
    });
    let r = send(addr(), "POST", "/buffer", &[("x-target", "upstream")], body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.ends_with("\n\nHELLO WORLD+filtered"), "{}", r.body);
    // Headers were held until the body was complete, so they could still be changed...
    assert!(r.body.contains("x-body-seen: 11\n"), "{}", r.body);
    // ...and content-length matches the replaced body, not the client's.
    assert_eq!(r.header("x-upstream-content-length"), Some("20"));
}

#[tokio::test]
async fn a_body_continue_releases_paused_headers() {
    let r = send(
        addr(),
        "POST",
        "/buffer-continue",
        &[("x-target", "upstream"), ("content-length", "4")],
        HostBody::full("abcd"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("POST /buffer-continue\n"));
    assert!(r.body.ends_with("\n\nabcd"));
    assert_eq!(r.header("x-upstream-content-length"), Some("4"));
}

#[tokio::test]
async fn local_replies_pass_through_response_callbacks() {
    let r = get(addr(), "/local", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "denied by probe");
    assert_eq!(r.header("x-probe-local"), Some("1"));
    assert_eq!(r.header("content-length"), Some("15"));
    assert_eq!(r.header("x-probe-response-status"), Some("403"));
}

#[tokio::test]
async fn missing_or_unknown_cluster_is_503() {
    for headers in [vec![], vec![("x-target", "no-such-cluster")]] {
        let r = get(addr(), "/anything", &headers).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "no healthy upstream\n");
        // Host-made replies also run through the filter, as Envoy's router replies do.
        assert_eq!(r.header("x-probe-response-status"), Some("503"));
    }
}

#[tokio::test]
async fn connect_failure_is_503_and_timeout_is_504() {
    let r = get(addr(), "/x", &[("x-target", "dead")]).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connection failure"), "{}", r.body);

    let started = Instant::now();
    let r = get(addr(), "/slow", &[("x-target", "slow")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.body, "upstream request timeout\n");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn per_try_timeout_header_bounds_the_wait_for_response_headers() {
    // The `upstream` cluster has no timeout of its own; /slow answers after 2 s.
    let started = Instant::now();
    let r = get(
        addr(),
        "/slow",
        &[
            ("x-target", "upstream"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
        ],
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));

    // With both headers the shorter bound wins.
    let started = Instant::now();
    let r = get(
        addr(),
        "/slow",
        &[
            ("x-target", "upstream"),
            ("x-envoy-upstream-rq-timeout-ms", "60000"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
        ],
    )
    .await;
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Neither header is forwarded upstream.
    let r = get(
        addr(),
        "/echo",
        &[
            ("x-target", "upstream"),
            ("x-envoy-upstream-rq-timeout-ms", "5000"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "5000"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("x-envoy-upstream-rq"), "{}", r.body);
}

#[tokio::test]
async fn upstream_reset_mid_body_ends_the_body_for_the_filter() {
    // The client already has the head: the filter gets end-of-stream (and could close the
    // stream well-formed) instead of the client being reset.
    let r = get(addr(), "/stream-reset", &[("x-target", "upstream")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "data: one\n\n");
    let order = eventually(|| async {
        let r = get(addr(), "/shared?key=order:/stream-reset", &[]).await;
        r.body.ends_with("done").then_some(r.body)
    })
    .await;
    assert!(
        order.ends_with("response_body(11,eos=false),response_body(0,eos=true),log,done"),
        "{order}"
    );
}

#[tokio::test]
async fn upstream_reset_mid_body_of_anything_but_an_event_stream_resets_the_client() {
    // As in Envoy: ending this body cleanly would hide that it was cut short.
    let req = http::Request::builder()
        .uri(format!("http://{}/plain-reset", addr()))
        .header("x-target", "upstream")
        .body(HostBody::empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await;
    assert!(collected.is_err(), "a cut-short body ended cleanly");
}

#[tokio::test]
async fn a_stalled_event_stream_ends_for_the_filter_after_the_idle_timeout() {
    // The `idle` cluster allows 200 ms of silence; the upstream pauses for 2 s.
    let started = Instant::now();
    let r = get(addr(), "/stream-stall", &[("x-target", "idle")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "data: one\n\n");
    assert!(started.elapsed() < Duration::from_millis(1500));
    let order = eventually(|| async {
        let r = get(addr(), "/shared?key=order:/stream-stall", &[]).await;
        r.body.ends_with("done").then_some(r.body)
    })
    .await;
    assert!(
        order.ends_with("response_body(11,eos=false),response_body(0,eos=true),log,done"),
        "{order}"
    );

    // Any other stalled body resets the client; without an idle timeout it just waits.
    let req = http::Request::builder()
        .uri(format!("http://{}/plain-stall", addr()))
        .header("x-target", "idle")
        .body(HostBody::empty())
        .unwrap();
    let started = Instant::now();
    let resp = client().request(req).await.unwrap();
    assert!(resp.into_body().collect().await.is_err());
    assert!(started.elapsed() < Duration::from_millis(1500));
    let r = get(addr(), "/plain-stall", &[("x-target", "upstream")]).await;
    assert_eq!(r.body, "data: one\n\n");
}

#[tokio::test]
async fn upstream_statuses_pass_through() {
    let r = get(addr(), "/status/429", &[("x-target", "upstream")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, "status page");
    assert_eq!(r.header("x-probe-response-status"), Some("429"));
}

#[tokio::test]
async fn streamed_response_chunks_reach_the_client_immediately() {
    let req = http::Request::builder()
        .uri(format!("http://{}/upper-response/stream", addr()))
        .header("x-target", "upstream")
        .body(HostBody::empty())
        .unwrap();
    let started = Instant::now();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers().get("content-length"), None);
    let mut body = resp.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push((
                started.elapsed(),
                String::from_utf8_lossy(&data).into_owned(),
            ));
        }
    }
    let text: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(text, "DATA: ONE\n\nDATA: TWO\n\nDATA: THREE\n\n");
    // The upstream takes 600 ms in total; the first rewritten chunk must not wait for it.
    assert!(chunks[0].1.starts_with("DATA: ONE"));
    assert!(
        chunks[0].0 < Duration::from_millis(400),
        "first chunk after {:?}",
        chunks[0].0
    );
    assert!(chunks.len() >= 3, "chunks were merged: {chunks:?}");
}

#[tokio::test]
async fn a_paused_response_body_is_buffered_until_the_end() {
    let r = get(addr(), "/wrap-response/stream", &[("x-target", "upstream")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "[data: one\n\ndata: two\n\ndata: three\n\n]");
    assert_eq!(r.header("content-length"), Some("37"));
}

#[tokio::test]
async fn callbacks_run_in_envoy_order() {
    let r = send(
        addr(),
        "POST",
        "/order-check",
        &[("x-target", "upstream"), ("content-length", "3")],
        HostBody::full("abc"),
    )
    .await;
    assert_eq!(r.status, 200);
    let order = eventually(|| async {
        let r = get(addr(), "/shared?key=order:/order-check", &[]).await;
        r.body.ends_with("done").then_some(r.body)
    })
    .await;
    assert_eq!(
        order,
        "request_headers(eos=false),request_body(3,eos=true),response_headers(eos=false),\
         response_body(NN,eos=true),log,done"
            .replace("NN", &(r.body.len()).to_string())
    );
}

#[tokio::test]
async fn get_requests_report_end_of_stream_on_headers() {
    let r = get(addr(), "/eos-check", &[("x-target", "upstream")]).await;
    assert_eq!(r.status, 200);
    let order = eventually(|| async {
        let r = get(addr(), "/shared?key=order:/eos-check", &[]).await;
        r.body.ends_with("done").then_some(r.body)
    })
    .await;
    assert!(
        order.starts_with("request_headers(eos=true),response_headers(eos=false)"),
        "{order}"
    );
}

#[tokio::test]
async fn head_responses_keep_their_length() {
    let r = send(
        addr(),
        "HEAD",
        "/head",
        &[("x-target", "upstream")],
        HostBody::empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "");
}
