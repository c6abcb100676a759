//! `fermyon:spin/variables@2.0.0`: application variables (`--var NAME=VALUE`), with Spin's
//! rules for names and for variables that are not set.

use super::bindings::fermyon::spin::variables;
use super::server::RequestState;

/// Spin's rule for variable names: `[a-z][a-z0-9_]*`.
pub(super) fn valid_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl variables::Host for RequestState {
    /// Spin's semantics: names are lower-case `[a-z][a-z0-9_]*`; an unset one is `undefined`.
    fn get(&mut self, name: String) -> Result<String, variables::Error> {
        if !valid_variable_name(&name) {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables
            .get(&name)
            .cloned()
            .ok_or_else(|| variables::Error::Undefined(format!("no variable for {name:?}")))
    }
}
