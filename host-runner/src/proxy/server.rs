//! The listener side of `serve`: bind the data-plane (and admin) listeners, start one VM
//! worker per thread, accept connections and hand every request to a stream driver.
//!
//! Kept apart from the driver so the per-stream semantics (in `super::stream`) read without
//! the process plumbing around them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::stream::handle;
use crate::config::RunnerConfig;
use crate::error::HostError;
use crate::vm::{spawn_worker, Plugin, VmHandle, World};

/// A started runner. Dropping it (or calling [`RunningServer::shutdown`]) stops it.
pub struct RunningServer {
    /// The bound data-plane address (useful with port 0).
    pub listen_addr: SocketAddr,
    /// The bound admin address, if an admin listener was requested.
    pub admin_addr: Option<SocketAddr>,
    /// Shared state: metrics, shared data, clusters.
    pub world: Arc<World>,
    shutdown: watch::Sender<bool>,
    workers: Vec<VmHandle>,
}

impl RunningServer {
    /// Stop accepting connections and stop the worker threads.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for w in &self.workers {
            w.stop();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Compile the filter, start the workers (each runs `proxy_on_vm_start` and
/// `proxy_on_configure`; a rejected configuration is an error), then bind the listeners.
/// Must be called inside a tokio runtime; I/O runs on that runtime.
pub async fn start(config: RunnerConfig) -> Result<RunningServer, HostError> {
    let workers_n = config.workers.max(1);
    let (listen, admin) = (config.listen, config.admin);
    // Bind first: a busy port is the most common startup error and needs no VM to report.
    let listener = crate::listener::bind(listen).map_err(|source| HostError::Bind {
        addr: listen,
        source,
    })?;
    let listen_addr = listener.local_addr().map_err(|source| HostError::Bind {
        addr: listen,
        source,
    })?;
    let admin_listener = match admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| HostError::Bind { addr, source })?,
        ),
        None => None,
    };
    let world = Arc::new(World::new(config, tokio::runtime::Handle::current())?);
    let plugin = {
        let world = world.clone();
        tokio::task::spawn_blocking(move || Plugin::compile(&world.config))
            .await
            .map_err(|e| HostError::Worker(e.to_string()))??
    };
    let plugin = Arc::new(plugin);
    let mut workers = Vec::with_capacity(workers_n);
    for i in 0..workers_n {
        workers.push(spawn_worker(i, plugin.clone(), world.clone()).await?);
    }
    drop(plugin);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let admin_addr = match admin_listener {
        Some(l) => {
            let bound = l.local_addr().ok();
            tokio::spawn(crate::admin::serve(l, world.clone(), shutdown_rx.clone()));
            bound
        }
        None => None,
    };
    tokio::spawn(accept_loop(
        listener,
        workers.clone(),
        world.clone(),
        shutdown_rx,
    ));
    Ok(RunningServer {
        listen_addr,
        admin_addr,
        world,
        shutdown,
        workers,
    })
}

/// Accept connections and pin each to a worker round-robin, as Envoy pins a connection to
/// the worker that accepted it.
async fn accept_loop(
    listener: TcpListener,
    workers: Vec<VmHandle>,
    world: Arc<World>,
    mut shutdown: watch::Receiver<bool>,
) {
    let next = AtomicUsize::new(0);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(peer);
        let vm = workers[next.fetch_add(1, Ordering::Relaxed) % workers.len()].clone();
        let world = world.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                handle(world.clone(), vm.clone(), peer, local, req)
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                tracing::debug!(error = %e, "downstream connection ended with an error");
            }
        });
    }
}
