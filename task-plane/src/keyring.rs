//! The gateway configuration the task plane routes with, and the key set it authenticates
//! with: the config's static keys plus the control plane's managed keys, read from the same
//! store and refreshed when their version moves (as an edge host would poll them).

use std::sync::{Arc, RwLock};

use control_plane::store::Store;
use switchyard_core::control::KeySnapshot;
use switchyard_core::Gateway;

use crate::error::Error;

/// The gateway in force, swapped whole when the managed keys change.
pub struct Keyring {
    current: RwLock<Arc<Gateway>>,
    /// The config with its secrets resolved and no managed keys.
    base: Gateway,
    store: Store,
}

impl Keyring {
    /// A keyring over `gateway` (secrets already resolved), reading managed keys from
    /// `store`.
    pub fn new(gateway: Gateway, store: Store) -> Self {
        Keyring {
            current: RwLock::new(Arc::new(gateway.clone())),
            base: gateway,
            store,
        }
    }

    /// The gateway in force.
    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reloads the managed keys if their version moved; returns whether it did.
    pub async fn refresh(&self, now_s: i64) -> Result<bool, Error> {
        let known = self.gateway().managed_keys_version();
        let snapshot = self
            .store
            .transact(move |tx| -> Result<Option<_>, Error> {
                let version = control_plane::keys::version(tx)?;
                if Some(version) == known {
                    return Ok(None);
                }
                Ok(Some(control_plane::keys::snapshot(tx, now_s)?))
            })
            .await?;
        let Some(snapshot) = snapshot else {
            return Ok(false);
        };
        // The control plane's snapshot is exactly what `/edge/v1/keys` serves; the core
        // parses that form.
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        let parsed = KeySnapshot::parse(&bytes).map_err(Error::Corrupt)?;
        let updated = Arc::new(self.base.with_managed_keys(parsed));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = updated;
        Ok(true)
    }
}
