//! The admin listener, Envoy-style: `/metrics` (Prometheus text; also `/stats/prometheus`)
//! and `/ready`. It runs on a separate port so scraping never competes with data-plane routes.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::vm::World;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn route(world: &World, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" | "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            world.metrics.render_prometheus(),
        ),
        // Workers are configured before the listener opens, so reaching this means ready.
        "/ready" => reply(StatusCode::OK, "text/plain", "LIVE\n".into()),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "admin endpoints: /metrics, /ready\n".into(),
        ),
    }
}

/// Serve the admin endpoints until `shutdown` flips.
pub(crate) async fn serve(
    listener: TcpListener,
    world: Arc<World>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            _ = shutdown.changed() => return,
        };
        let world = world.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&world, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
