//! The command-line options a binary adds to mount the control plane (`gpu-backend` flattens
//! [`ControlPlaneArgs`] into its own), and starting it from them.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;

use crate::clock::SystemClock;
use crate::store::Store;
use crate::{secrets, ControlPlane, Error};

/// File name of the SQLite database inside `--data-dir`.
pub const SQLITE_FILE: &str = "control-plane.sqlite3";

/// Control plane options.
#[derive(Debug, Clone, clap::Args)]
pub struct ControlPlaneArgs {
    /// Directory for the control plane's SQLite database (control-plane.sqlite3).
    #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = ".cache/switchyard")]
    pub data_dir: PathBuf,

    /// PostgreSQL database (postgres://user@host:port/db) for the control plane, shared by
    /// several nodes. Without it, SQLite in --data-dir.
    #[arg(long, env = "SWITCHYARD_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Do not mount the control plane (admin API, edge API, dashboard).
    #[arg(long)]
    pub no_control_plane: bool,

    /// SHA-256 hex of an admin key to create (role admin) if missing: the first operator's
    /// key. Alternatively set SWITCHYARD_ADMIN_KEY to the key itself; it is hashed at start.
    #[arg(long, env = "SWITCHYARD_ADMIN_KEY_SHA256", value_name = "HEX")]
    pub admin_key_sha256: Option<String>,

    /// SHA-256 hex of a token edges present to /edge/v1 (repeatable, or comma-separated in
    /// the environment variable). Without one, the edge API answers 401.
    #[arg(
        long = "edge-token-sha256",
        env = "SWITCHYARD_EDGE_TOKEN_SHA256",
        value_name = "HEX",
        value_delimiter = ','
    )]
    pub edge_token_sha256: Vec<String>,

    /// Seconds an admission (POST /edge/v1/admit) waits for its usage record before it
    /// expires and its estimate is charged as spent.
    #[arg(long, env = "SWITCHYARD_ADMISSION_TTL_S", default_value_t = crate::limits::DEFAULT_ADMISSION_TTL_MS / 1000)]
    pub admission_ttl_s: u64,

    /// `SECRET=FILE`: mint Google access tokens (Vertex AI) from the service-account key in
    /// FILE and hand them to the edges with the key sync under the secret name SECRET (the
    /// provider's `api_key_secret`), refreshed before they expire. Repeatable, or
    /// comma-separated in the environment variable.
    #[arg(
        long = "service-account",
        env = "SWITCHYARD_SERVICE_ACCOUNTS",
        value_name = "SECRET=FILE",
        value_delimiter = ','
    )]
    pub service_account: Vec<String>,
}

/// Environment variable holding a plain bootstrap admin key (hashed at start, never stored).
pub const ADMIN_KEY_ENV: &str = "SWITCHYARD_ADMIN_KEY";

impl ControlPlaneArgs {
    /// Opens the store, migrates it, ensures the bootstrap admin keys and returns the router;
    /// `None` with `--no-control-plane`.
    pub async fn start(&self) -> Result<Option<Router>, Error> {
        if self.no_control_plane {
            return Ok(None);
        }
        let store = self.open_store().await?;
        self.mount(store).await
    }

    /// Opens (and migrates) the store these options name, for the control plane and the
    /// planes that share it (the task plane).
    pub async fn open_store(&self) -> Result<Store, Error> {
        let sqlite_path = self.data_dir.join(SQLITE_FILE);
        let database_url = self.database_url.as_deref().filter(|url| !url.is_empty());
        Ok(Store::open(database_url, &sqlite_path).await?)
    }

    /// The control plane over an opened `store` (see [`ControlPlaneArgs::open_store`]):
    /// ensures the bootstrap admin keys and returns the router; `None` with
    /// `--no-control-plane`.
    pub async fn mount(&self, store: Store) -> Result<Option<Router>, Error> {
        if self.no_control_plane {
            return Ok(None);
        }
        let sqlite_path = self.data_dir.join(SQLITE_FILE);
        let database_url = self.database_url.as_deref().filter(|url| !url.is_empty());
        let mut bootstrap_hashes: Vec<String> = self.admin_key_sha256.iter().cloned().collect();
        if let Some(key) = std::env::var(ADMIN_KEY_ENV).ok().filter(|k| !k.is_empty()) {
            bootstrap_hashes.push(secrets::sha256_hex(&key));
        }
        let mut control = ControlPlane::new(store, Arc::new(SystemClock), &self.edge_token_sha256)?
            .with_admission_ttl_ms(self.admission_ttl_s.saturating_mul(1000));
        for spec in &self.service_account {
            let (secret, file) = spec
                .split_once('=')
                .filter(|(secret, file)| !secret.is_empty() && !file.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("--service-account takes SECRET=FILE; got `{spec}`"),
                        "invalid_value",
                    )
                })?;
            let account = crate::credentials::ServiceAccount::from_file(file.as_ref())
                .map_err(|e| Error::invalid(e.to_string(), "invalid_value"))?;
            println!(
                "control plane: `{secret}` is minted from the service account {}",
                account.client_email()
            );
            control = control.with_service_account(secret, account);
        }
        for hash in &bootstrap_hashes {
            control.ensure_admin_key(hash).await?;
        }
        match database_url {
            Some(_) => println!("control plane: PostgreSQL store"),
            None => println!("control plane: SQLite store at {}", sqlite_path.display()),
        }
        if bootstrap_hashes.is_empty() {
            println!("control plane: no bootstrap admin key given (--admin-key-sha256 / {ADMIN_KEY_ENV}); existing admin keys still work");
        }
        if self.edge_token_sha256.is_empty() {
            println!("control plane: no edge token (--edge-token-sha256): /edge/v1 answers 401");
        }
        Ok(Some(control.router()))
    }
}
