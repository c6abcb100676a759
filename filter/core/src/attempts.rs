//! The record of a request's attempts along its fallback chain.
//!
//! Every host walks the chain the same way and must report it the same way: the
//! `x-switchyard-attempts` header, the usage record's attempt count, and — when every
//! deployment failed — one error in the caller's dialect that lists what was tried.

use std::fmt;

use crate::error::{ErrorKind, GatewayError};

/// Response header listing the attempts made (`deployment;outcome;Nms`, comma-separated).
pub const ATTEMPTS_HEADER: &str = "x-switchyard-attempts";

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this HTTP status.
    Status(u16),
    /// No answer within the attempt's timeout.
    Timeout,
    /// The connection could not be made.
    ConnectionFailed,
    /// The connection was reset before a complete answer.
    Reset,
    /// A success status with a body that could not be read (invalid JSON, a broken stream).
    Malformed,
    /// Skipped: the deployment was at its own limits (not tried, not its fault).
    Saturated,
    /// The host could not even send it (unknown cluster, missing credential, ...).
    NotSent(String),
}

impl Outcome {
    fn is_timeout(&self) -> bool {
        matches!(
            self,
            Outcome::Timeout | Outcome::Status(408) | Outcome::Status(504)
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(s) => write!(f, "{s}"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::ConnectionFailed => f.write_str("connection-failed"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Malformed => f.write_str("malformed"),
            Outcome::Saturated => f.write_str("saturated"),
            Outcome::NotSent(why) => write!(f, "not-sent:{why}"),
        }
    }
}

/// One finished attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// Deployment id (`provider/upstream-model`).
    pub deployment: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub millis: u64,
}

/// All attempts of one request, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttemptLog {
    records: Vec<AttemptRecord>,
}

impl AttemptLog {
    /// Appends a finished attempt.
    pub fn push(&mut self, deployment: impl Into<String>, outcome: Outcome, millis: u64) {
        self.records.push(AttemptRecord {
            deployment: deployment.into(),
            outcome,
            millis,
        });
    }

    /// Drops the deployments found at their limits (a walk of the chain after a wait finds
    /// them again or takes them); the attempts that were sent stay.
    pub fn forget_saturated(&mut self) {
        self.records.retain(|r| r.outcome != Outcome::Saturated);
    }

    /// The attempts so far.
    pub fn records(&self) -> &[AttemptRecord] {
        &self.records
    }

    /// Number of attempts made (at least 1 once a request was sent).
    pub fn count(&self) -> u32 {
        self.records.len().max(1) as u32
    }

    /// Value of the [`ATTEMPTS_HEADER`]; empty when nothing was attempted.
    pub fn header_value(&self) -> String {
        use std::fmt::Write;
        // Written into one string: this runs on every answer.
        let mut value = String::with_capacity(self.records.len() * 48);
        for (i, a) in self.records.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(value, "{sep}{};{};{}ms", a.deployment, a.outcome, a.millis);
        }
        value
    }

    /// The error for a request whose every attempt failed: 504 when all timed out, 429 (with
    /// `Retry-After`) when the last was rate limited, 502 otherwise; the message lists the
    /// attempts (no secrets: only deployment ids, outcomes and durations).
    pub fn all_failed(&self) -> GatewayError {
        let last = self.records.last().map(|r| &r.outcome);
        let kind =
            if !self.records.is_empty() && self.records.iter().all(|r| r.outcome.is_timeout()) {
                ErrorKind::Timeout
            } else if last == Some(&Outcome::Status(429)) {
                ErrorKind::RateLimited
            } else {
                ErrorKind::BadGateway
            };
        let listing = self
            .records
            .iter()
            .map(|a| format!("{} ({}, {} ms)", a.deployment, a.outcome, a.millis))
            .collect::<Vec<_>>()
            .join("; ");
        let mut err = GatewayError::new(
            kind,
            format!("all {} deployments failed: {listing}", self.records.len()),
        );
        if kind == ErrorKind::RateLimited {
            err.retry_after = Some(1);
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_all_failed() {
        let mut log = AttemptLog::default();
        log.push("a/x", Outcome::Status(503), 3);
        log.push("b/y", Outcome::ConnectionFailed, 1);
        assert_eq!(log.header_value(), "a/x;503;3ms, b/y;connection-failed;1ms");
        let err = log.all_failed();
        assert_eq!(err.status, 502);
        assert!(err.message.contains("a/x (503, 3 ms)") && err.message.contains("b/y"));
        assert_eq!(log.count(), 2);
    }

    #[test]
    fn all_timeouts_are_504_and_last_429_is_rate_limited() {
        let mut log = AttemptLog::default();
        log.push("a/x", Outcome::Timeout, 30);
        log.push("b/y", Outcome::Status(504), 30);
        assert_eq!(log.all_failed().status, 504);
        log.push("c/z", Outcome::Status(429), 1);
        let err = log.all_failed();
        assert_eq!((err.status, err.retry_after), (429, Some(1)));
    }
}
