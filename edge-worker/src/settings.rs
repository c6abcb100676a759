//! Where the component's configuration and credentials come from.
//!
//! The gateway config is bundled with the component (`config/demo.json`) so a bare
//! `spin up` works, and the Spin variable `gateway_config` (a JSON string) overrides it so an
//! operator changes routing without rebuilding. Provider credentials are never in the config:
//! the config names them (`api_key_secret`), and they are read from Spin variables (marked
//! `secret = true` in `spin.toml`) or, failing that, from the component's environment.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use switchyard_core::{ConfigError, Gateway};

/// The config shipped inside the component, used when `gateway_config` is unset or empty.
const BUNDLED_CONFIG: &str = include_str!("../../config/demo.json");

/// The Spin variable that overrides the bundled config.
pub const CONFIG_VARIABLE: &str = "gateway_config";

/// Why the gateway could not be built.
#[derive(Debug)]
pub enum SettingsError {
    /// The host failed to resolve `gateway_config` (not merely "undefined").
    Variable(spin_sdk::variables::Error),
    /// The config document is invalid.
    Config {
        /// `gateway_config` or `bundled`.
        source: &'static str,
        /// What is wrong with it.
        error: ConfigError,
    },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Variable(e) => write!(f, "cannot read `{CONFIG_VARIABLE}`: {e}"),
            SettingsError::Config { source, error } => {
                write!(f, "invalid gateway config ({source}): {error}")
            }
        }
    }
}

impl std::error::Error for SettingsError {}

/// The gateway this instance built, and the config text it was built from.
struct Built {
    text: String,
    gateway: Rc<Gateway>,
}

thread_local! {
    /// Kept for the instance's next request, which a host that reuses instances
    /// (`serve-component`'s and `wasmtime serve`'s `--max-instance-reuse-count`) sends to the
    /// same memory: it then
    /// skips the config's parse, its secrets' lookups and its deployments' resolution. A
    /// fresh instance per request (the default) starts empty.
    static BUILT: RefCell<Option<Built>> = const { RefCell::new(None) };
}

/// The gateway of `gateway_config`, or of the bundled config when it is unset: the one this
/// instance built for an earlier request when the config text is the same, otherwise built
/// now. Secrets are resolved when it is built, so a reused instance keeps the credentials it
/// read for as long as it lives (`--max-instance-reuse-count` bounds that); a gateway with a
/// secret that did not resolve is not kept.
pub fn gateway() -> Result<Rc<Gateway>, SettingsError> {
    let (source, text) = match spin_sdk::variables::get(CONFIG_VARIABLE) {
        Ok(text) if !text.trim().is_empty() => (CONFIG_VARIABLE, text),
        Ok(_) | Err(spin_sdk::variables::Error::Undefined(_)) => {
            ("bundled", BUNDLED_CONFIG.to_string())
        }
        Err(e) => return Err(SettingsError::Variable(e)),
    };
    let kept = BUILT.with_borrow(|built| {
        built
            .as_ref()
            .filter(|built| built.text == text)
            .map(|built| built.gateway.clone())
    });
    if let Some(gateway) = kept {
        return Ok(gateway);
    }
    let gateway = Gateway::from_json(text.as_bytes())
        .map_err(|error| SettingsError::Config { source, error })?;
    // A secret the host could not give (unset, or a variables provider that failed just now)
    // is looked up again by the next request rather than kept missing for the instance's life.
    let missing = Cell::new(false);
    let gateway = Rc::new(gateway.resolve_secrets(&|name| {
        let value = secret(name);
        missing.set(missing.get() || value.is_none());
        value
    }));
    if !missing.get() {
        BUILT.set(Some(Built {
            text,
            gateway: gateway.clone(),
        }));
    }
    Ok(gateway)
}

/// Resolves a credential name from the config (`OPENAI_API_KEY`).
///
/// Spin variable names are lower-case, so the Spin variable is the lower-cased name
/// (`openai_api_key`); the environment is consulted with the name as written.
pub fn secret(name: &str) -> Option<String> {
    let variable = name.to_ascii_lowercase();
    spin_sdk::variables::get(&variable)
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var(name).ok().filter(|v| !v.is_empty()))
}
