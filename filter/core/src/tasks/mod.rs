//! The task plane's decisions, sans-I/O: what async tasks, webhooks and the providers behind
//! them look like on the wire, for the native task plane (which performs the I/O) and the
//! edge hosts alike.
//!
//! * [`webhook`] — Standard Webhooks signing and verification (Switchyard's own webhooks to
//!   clients, and Replicate's to us), plus the HMAC helpers other providers' schemes use.
//! * [`target`] — which webhook URLs may be called at all (no way into the private network).
//! * [`edge`] — which client requests an edge forwards to the task plane, and how.
//! * [`facade`] — OpenAI's media endpoints over asynchronous providers' models (the
//!   synchronous facade): what is served, and the translations both ways.
//! * [`providers`] — asynchronous media providers (WaveSpeed, Replicate, fal, DashScope, Veo):
//!   submit, poll, cancel and their inbound webhooks, normalised into one task model.

pub mod edge;
pub mod facade;
pub mod providers;
pub mod target;
pub mod webhook;
