//! Webhooks to clients: signed per Standard Webhooks, retried with backoff, dead-lettered.
//!
//! Each message is claimed with a lease like a task, sent, and its outcome recorded: 2xx is
//! delivered; `410 Gone` is dead at once (the receiver says it will never take it); any
//! other status, a timeout or a refused connection is retried after
//! `base × 2^(attempts-1)` capped at the maximum, drawn uniformly from the upper half of that
//! (jitter, so a receiver that comes back is not hit by every retry at once), and never
//! sooner than the receiver's `Retry-After`; after the last attempt the message is dead and
//! waits for a redelivery. A node killed mid-attempt leaves the lease behind: the message is
//! sent again once it lapses (at-least-once; the `webhook-id` lets the receiver drop the
//! repeat).
//!
//! The target is checked before every attempt: an IP literal against the policy, a host name
//! through a resolver that drops every address the policy refuses (so the connection goes
//! only to a checked address); redirects are never followed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use switchyard_core::tasks::target::TargetPolicy;
use switchyard_core::tasks::webhook::WebhookSecret;

use crate::error::Error;
use crate::store::{self, AttemptResult, Delivery, DeliveryState};
use crate::time::now_ms;
use crate::{Plane, Settings};

/// Most messages claimed at once.
const CLAIM_BATCH: usize = 200;
/// Most attempts in flight on one node.
const MAX_IN_FLIGHT: usize = 512;
/// How often an idle loop looks for due messages.
const IDLE_TICK: Duration = Duration::from_millis(200);
/// The longest `Retry-After` honoured (a receiver cannot park a message for days).
const MAX_RETRY_AFTER_MS: u64 = 24 * 3_600_000;

/// A resolver that keeps only the addresses webhooks may reach.
struct PolicyResolver {
    policy: TargetPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(
                    format!("`{host}` resolves only to addresses webhooks may not reach").into(),
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The client webhooks are sent with.
pub(crate) fn client(settings: &Settings) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(PolicyResolver {
            policy: settings.webhook_policy.clone(),
        }))
        .timeout(Duration::from_millis(settings.webhook_timeout_ms))
        .user_agent("Switchyard-Webhooks/1")
        .build()
        .map_err(|e| Error::Start(format!("webhook HTTP client: {e}")))
}

/// Claims due messages and sends them, forever.
pub(crate) async fn delivery_loop(plane: Arc<Plane>) {
    loop {
        let free = MAX_IN_FLIGHT.saturating_sub(plane.deliveries_in_flight.load(Ordering::SeqCst));
        let want = free.min(CLAIM_BATCH);
        let mut claimed = 0;
        if want > 0 {
            let token = format!(
                "{}:w{}",
                plane.node,
                plane.claims.fetch_add(1, Ordering::SeqCst)
            );
            let now = now_ms();
            let lease_until = now
                + plane
                    .settings
                    .lease_ms
                    .max(plane.settings.webhook_timeout_ms * 2);
            let claim_token = token.clone();
            match plane
                .store
                .transact(move |tx| {
                    store::claim_deliveries(tx, &claim_token, now, lease_until, want as u32)
                })
                .await
            {
                Ok(deliveries) => {
                    claimed = deliveries.len();
                    for delivery in deliveries {
                        plane.deliveries_in_flight.fetch_add(1, Ordering::SeqCst);
                        let plane = Arc::clone(&plane);
                        let token = token.clone();
                        tokio::spawn(async move {
                            attempt(&plane, delivery, &token).await;
                            plane.deliveries_in_flight.fetch_sub(1, Ordering::SeqCst);
                            plane.wake_deliveries.notify_one();
                        });
                    }
                }
                Err(err) => eprintln!("task plane: claiming webhooks failed: {err}"),
            }
        }
        if claimed == want && claimed > 0 {
            continue;
        }
        tokio::select! {
            _ = plane.wake_deliveries.notified() => {}
            _ = tokio::time::sleep(IDLE_TICK) => {}
        }
    }
}

/// What one attempt came to, before backoff is applied.
enum Sent {
    Delivered(u16),
    Gone,
    Retry {
        status: Option<u16>,
        error: String,
        retry_after_ms: Option<u64>,
    },
    /// The message can never be sent as it is (target refused, no secret).
    Undeliverable(String),
}

async fn send(plane: &Plane, delivery: &Delivery) -> Sent {
    if let Err(err) = plane.settings.webhook_policy.check(&delivery.url) {
        return Sent::Undeliverable(err.to_string());
    }
    let key_id = delivery.key_id.clone();
    let settings = plane
        .store
        .transact(move |tx| store::webhook_settings(tx, &key_id))
        .await;
    let secret = match settings {
        Ok(Some(s)) => match WebhookSecret::parse(&s.secret) {
            Ok(secret) => secret,
            Err(_) => return Sent::Undeliverable("the key's webhook secret is unreadable".into()),
        },
        Ok(None) => return Sent::Undeliverable("the key has no webhook secret".into()),
        Err(err) => {
            return Sent::Retry {
                status: None,
                error: format!("store: {err}"),
                retry_after_ms: None,
            }
        }
    };
    let timestamp = now_ms() / 1000;
    let mut request = plane
        .webhook_http
        .post(&delivery.url)
        .header("content-type", "application/json")
        .body(delivery.payload.clone());
    for (name, value) in secret.headers(&delivery.id, timestamp, delivery.payload.as_bytes()) {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after_ms = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after_ms(v, now_ms()));
            match status {
                200..=299 => Sent::Delivered(status),
                410 => Sent::Gone,
                _ => Sent::Retry {
                    status: Some(status),
                    error: format!("the receiver answered {status}"),
                    retry_after_ms,
                },
            }
        }
        Err(err) => Sent::Retry {
            status: None,
            error: if err.is_timeout() {
                "timed out".to_string()
            } else if err.is_connect() {
                format!("could not connect: {}", root_cause(&err))
            } else {
                format!("failed: {}", root_cause(&err))
            },
            retry_after_ms: None,
        },
    }
}

/// The innermost error's text (reqwest's own says only "error sending request").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn attempt(plane: &Plane, delivery: Delivery, token: &str) {
    let sent = send(plane, &delivery).await;
    let now = now_ms();
    let attempts = delivery.attempts + 1;
    let settings = &plane.settings;
    let result = match sent {
        Sent::Delivered(status) => AttemptResult {
            state: DeliveryState::Delivered,
            next_attempt_at_ms: now,
            status: Some(status),
            error: None,
        },
        Sent::Gone => AttemptResult {
            state: DeliveryState::Dead,
            next_attempt_at_ms: now,
            status: Some(410),
            error: Some("the receiver answered 410 Gone".into()),
        },
        Sent::Undeliverable(error) => AttemptResult {
            state: DeliveryState::Dead,
            next_attempt_at_ms: now,
            status: None,
            error: Some(error),
        },
        Sent::Retry {
            status,
            error,
            retry_after_ms,
        } if attempts < settings.webhook_max_attempts => {
            let jitter = rand::rng().random::<f64>();
            let delay = backoff_ms(settings, attempts, jitter, retry_after_ms);
            AttemptResult {
                state: DeliveryState::Pending,
                next_attempt_at_ms: now + delay,
                status,
                error: Some(error),
            }
        }
        Sent::Retry { status, error, .. } => AttemptResult {
            state: DeliveryState::Dead,
            next_attempt_at_ms: now,
            status,
            error: Some(format!("{error}; gave up after {attempts} attempts")),
        },
    };
    let outcome = match result.state {
        DeliveryState::Delivered => "delivered",
        DeliveryState::Pending => "retry",
        DeliveryState::Dead => "dead",
    };
    plane
        .metrics
        .inc("switchyard_webhook_attempts_total", &[("outcome", outcome)]);
    let (id, token) = (delivery.id.clone(), token.to_string());
    if let Err(err) = plane
        .store
        .transact(move |tx| store::record_attempt(tx, &id, &token, &result, now))
        .await
    {
        eprintln!(
            "task plane: webhook {}: recording an attempt failed: {err}",
            delivery.id
        );
    }
}

/// The delay before attempt `attempts + 1`: `base × 2^(attempts-1)` capped at the maximum,
/// drawn from its upper half by `jitter` (0..1), and at least the receiver's `Retry-After`.
pub(crate) fn backoff_ms(
    settings: &Settings,
    attempts: u32,
    jitter: f64,
    retry_after_ms: Option<u64>,
) -> u64 {
    let exponent = attempts.saturating_sub(1).min(40);
    let full = settings
        .webhook_retry_base_ms
        .saturating_mul(1u64 << exponent)
        .min(settings.webhook_retry_max_ms);
    let jittered = full / 2 + ((full / 2) as f64 * jitter.clamp(0.0, 1.0)) as u64;
    jittered.max(retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS))
}

/// `Retry-After` in milliseconds from now: delay-seconds, or an HTTP-date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at_ms = http_date_ms(value)?;
    Some(at_ms.saturating_sub(now_ms))
}

fn http_date_ms(value: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (_, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let (h, m, s): (u64, u64, u64) = (
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
        clock.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days.checked_mul(86_400)? + (h * 3600 + m * 60 + s) as i64;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_jitters_and_honours_retry_after() {
        let settings = Settings {
            webhook_retry_base_ms: 1000,
            webhook_retry_max_ms: 60_000,
            ..Settings::default()
        };
        assert_eq!(backoff_ms(&settings, 1, 1.0, None), 1000);
        assert_eq!(backoff_ms(&settings, 1, 0.0, None), 500);
        assert_eq!(backoff_ms(&settings, 3, 1.0, None), 4000);
        assert_eq!(backoff_ms(&settings, 30, 1.0, None), 60_000);
        assert_eq!(backoff_ms(&settings, 30, 0.0, None), 30_000);
        assert_eq!(backoff_ms(&settings, 1, 0.5, Some(9_000)), 9_000);
        assert_eq!(
            backoff_ms(&settings, 1, 0.5, Some(u64::MAX)),
            MAX_RETRY_AFTER_MS
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after_ms(" 7 ", 0), Some(7000));
        // 1994-11-06T08:49:37Z is 784111777 s.
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770_000),
            Some(7000)
        );
        assert_eq!(
            retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_790_000),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", 0), None);
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:37 PST", 0), None);
    }
}
