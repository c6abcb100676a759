//! The command-line options a binary adds to mount the task plane (`gpu-backend` flattens
//! [`TaskPlaneArgs`] into its own), and starting it from them.

use std::path::PathBuf;

use axum::Router;
use control_plane::store::Store;
use switchyard_core::tasks::target::{Cidr, TargetPolicy};
use switchyard_core::Gateway;

use crate::{Settings, TaskPlane};

/// Task plane options.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskPlaneArgs {
    /// The gateway configuration (the JSON document the edges read) the task plane routes
    /// with: models, deployments, prices, providers and the names of their credentials
    /// (read from this process's environment). Without it the task plane is not mounted.
    #[arg(long, env = "SWITCHYARD_GATEWAY_CONFIG", value_name = "FILE")]
    pub gateway_config: Option<PathBuf>,

    /// Do not mount the task plane.
    #[arg(long)]
    pub no_task_plane: bool,

    /// Most task steps in flight on this node.
    #[arg(long, default_value_t = 256)]
    pub task_concurrency: usize,

    /// How long a claimed task or webhook stays this node's without a heartbeat, in ms; a
    /// killed node's work is picked up again after it.
    #[arg(long, default_value_t = 15_000)]
    pub task_lease_ms: u64,

    /// How long a task may take, all attempts together, in ms; then it fails with
    /// `task_timeout`.
    #[arg(long, default_value_t = 3_600_000)]
    pub task_timeout_ms: u64,

    /// Largest request body the task API accepts, in bytes (larger gets 413).
    #[arg(long, default_value_t = 25 * 1024 * 1024)]
    pub task_max_body_bytes: usize,

    /// An address range webhooks may reach although it is not public (loopback, private,
    /// link-local…), in CIDR notation; repeatable or comma-separated. By default webhooks go
    /// to public addresses only.
    #[arg(long = "webhook-allow-net", value_name = "CIDR", value_delimiter = ',')]
    pub webhook_allow_net: Vec<String>,

    /// Most attempts per webhook message before it is dead-lettered.
    #[arg(long, default_value_t = 8)]
    pub webhook_max_attempts: u32,

    /// First webhook retry delay in ms (doubling per attempt, with jitter).
    #[arg(long, default_value_t = 1_000)]
    pub webhook_retry_base_ms: u64,

    /// Longest webhook retry delay in ms.
    #[arg(long, default_value_t = 3_600_000)]
    pub webhook_retry_max_ms: u64,

    /// Deadline of one webhook attempt in ms.
    #[arg(long, default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// The task plane's base URL as asynchronous providers (WaveSpeed, Replicate, fal) can
    /// reach it, e.g. `https://gateway.example.com`: they are asked to call back
    /// `{url}/v1/provider-webhooks/{provider}/{task id}`, which must route to this task plane
    /// (through the edge's `task_plane` cluster or directly). Without it they are only polled.
    #[arg(long, env = "SWITCHYARD_TASK_PUBLIC_URL", value_name = "URL")]
    pub task_public_url: Option<String>,

    /// First delay before polling an asynchronous provider's task again, in ms (doubling
    /// per poll up to `--provider-poll-max-ms`); a provider's webhook makes it due at once.
    #[arg(long, default_value_t = 1_000)]
    pub provider_poll_ms: u64,

    /// Longest delay between two polls of a provider's task, in ms.
    #[arg(long, default_value_t = 30_000)]
    pub provider_poll_max_ms: u64,

    /// How long one provider may take with a task, in ms, before it is canceled there and
    /// the task falls back to the model's next deployment.
    #[arg(long, default_value_t = 1_800_000)]
    pub provider_attempt_timeout_ms: u64,
}

/// Why the task plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The gateway configuration could not be read or is invalid.
    #[error("gateway config {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// An option is invalid.
    #[error("{0}")]
    Option(String),
    /// The plane itself failed to start.
    #[error(transparent)]
    Plane(#[from] crate::Error),
}

impl TaskPlaneArgs {
    /// Starts the task plane over `store` and returns its router; `None` when it is turned
    /// off or has no gateway configuration. `edge_token_hashes` are the control plane's.
    pub fn start(
        &self,
        store: Store,
        edge_token_hashes: &[String],
    ) -> Result<Option<Router>, StartError> {
        if self.no_task_plane {
            return Ok(None);
        }
        let Some(path) = &self.gateway_config else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| StartError::Config {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        let gateway = Gateway::from_json(&bytes)
            .map_err(|e| StartError::Config {
                path: shown.clone(),
                message: e.to_string(),
            })?
            .resolve_secrets(&|name| std::env::var(name).ok());
        for model in gateway.unservable_models() {
            println!(
                "task plane: model `{}` cannot be served: {}",
                model.model, model.reason
            );
        }
        let allow = self
            .webhook_allow_net
            .iter()
            .map(|c| {
                Cidr::parse(c).map_err(|e| StartError::Option(format!("--webhook-allow-net: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(url) = &self.task_public_url {
            switchyard_core::providers::BaseUrl::parse(url)
                .map_err(|e| StartError::Option(format!("--task-public-url: {e}")))?;
        }
        if self.provider_poll_ms == 0 {
            return Err(StartError::Option("--provider-poll-ms must be > 0".into()));
        }
        if self.task_concurrency == 0 || self.task_lease_ms < 300 || self.webhook_max_attempts == 0
        {
            return Err(StartError::Option(
                "--task-concurrency and --webhook-max-attempts must be > 0, --task-lease-ms at least 300".into(),
            ));
        }
        let settings = Settings {
            edge_token_hashes: edge_token_hashes
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            webhook_policy: TargetPolicy { allow },
            concurrency: self.task_concurrency,
            lease_ms: self.task_lease_ms,
            task_timeout_ms: self.task_timeout_ms,
            webhook_max_attempts: self.webhook_max_attempts,
            webhook_retry_base_ms: self.webhook_retry_base_ms,
            webhook_retry_max_ms: self.webhook_retry_max_ms.max(self.webhook_retry_base_ms),
            webhook_timeout_ms: self.webhook_timeout_ms,
            max_body_bytes: self.task_max_body_bytes,
            public_url: self.task_public_url.clone(),
            provider_poll_ms: self.provider_poll_ms,
            provider_poll_max_ms: self.provider_poll_max_ms.max(self.provider_poll_ms),
            provider_attempt_timeout_ms: self.provider_attempt_timeout_ms,
        };
        let plane = TaskPlane::start(store, gateway, settings)?;
        Ok(Some(plane.router()))
    }
}
