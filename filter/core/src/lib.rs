//! Switchyard gateway core.
