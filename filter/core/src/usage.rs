//! Usage records and their cost.
//!
//! Every request ends in exactly one [`UsageRecord`], streamed or not, failed or not, so
//! metering and budgets can trust the sum of records.

use serde::Serialize;

use crate::canonical::TokenUsage;
use crate::config::Price;

/// Cost of `usage` at `price` (per 1M tokens); cached input is billed at the cached price.
pub fn cost(usage: &TokenUsage, price: &Price) -> f64 {
    let cached = usage.cached_input.min(usage.input);
    let uncached = usage.input - cached;
    let cached_price = price.cached_input.unwrap_or(price.input);
    (uncached as f64 * price.input
        + cached as f64 * cached_price
        + usage.output as f64 * price.output)
        / 1_000_000.0
}

/// The cost of media units at `price`: per image and per second of audio (absent prices
/// cost nothing, like absent token prices).
pub fn media_cost(images: u64, seconds: f64, price: &Price) -> f64 {
    images as f64 * price.image.unwrap_or(0.0) + seconds * price.second.unwrap_or(0.0)
}

/// What one request consumed, and how it went.
///
/// The ledger stores each record once, keyed by `request_id`; the JSON form (serde field
/// names) is the wire format hosts ship to the control plane.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    /// Unique id of the request (also sent to the client as `x-request-id`).
    pub request_id: String,
    /// When the request arrived, unix ms.
    pub timestamp_ms: u64,
    /// Gateway key id (never the key); empty when no key was accepted.
    pub key_id: String,
    /// The key's team, when it has one.
    pub team: Option<String>,
    /// Public model name the client asked for.
    pub model: String,
    /// Provider that answered (or was last tried).
    pub provider: String,
    /// Deployment id (`provider/upstream-model`) that answered.
    pub deployment: String,
    /// Input tokens, cached included.
    pub input_tokens: u64,
    /// Cached input tokens.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Images generated (`/v1/images/generations`).
    pub images: u64,
    /// Seconds of audio spoken or transcribed (`/v1/audio/*`).
    pub media_seconds: f64,
    /// Cost in the price table's currency.
    pub cost: f64,
    /// The price the cost was computed with (prices change; the record keeps the one used).
    pub price: Option<Price>,
    /// Final HTTP status the client saw.
    pub status: u16,
    /// Deployments tried, this one included.
    pub attempts: u32,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Wall time from request to last byte, when the host measured it.
    pub latency_ms: Option<u64>,
    /// Wall time from request to the first byte of a streamed answer.
    pub ttft_ms: Option<u64>,
}

impl UsageRecord {
    /// One JSON line, for logs and usage pipelines.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_cached_price() {
        let usage = TokenUsage {
            input: 1_000_000,
            output: 500_000,
            cached_input: 400_000,
            reasoning: 0,
        };
        let price = Price {
            input: 2.0,
            cached_input: Some(0.5),
            output: 8.0,
            ..Price::default()
        };
        let c = cost(&usage, &price);
        assert!(
            (c - (0.6 * 2.0 + 0.4 * 0.5 + 0.5 * 8.0)).abs() < 1e-9,
            "{c}"
        );
        let no_cached_price = Price {
            input: 2.0,
            cached_input: None,
            output: 0.0,
            ..Price::default()
        };
        assert!((cost(&usage, &no_cached_price) - 2.0).abs() < 1e-9);
    }
}
