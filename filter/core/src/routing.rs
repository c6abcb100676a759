//! Model routing: orders a model's deployments into the attempt chain for one request.
//!
//! The core decides the order; the host executes it (and falls back along it). Health and
//! latency observations live in the host (proxy-wasm shared data, process memory, ...) and are
//! passed in through [`HealthView`], so this stays pure and testable.

use serde::Deserialize;

use crate::config::{DeploymentConfig, ModelConfig};

/// How a model's deployments are ordered per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Config order.
    #[default]
    Priority,
    /// Random by weight, then the rest by weight (weighted sampling without replacement).
    Weighted,
    /// Lowest blended price first ("inference arbitrage").
    Cheapest,
    /// Lowest recent observed latency first; unobserved deployments are tried first so they
    /// get observed.
    LowestLatency,
}

/// Where a deployment stands for routing at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Try it in its strategy's place.
    Healthy,
    /// Its provider asked for a back-off (a 429 with `Retry-After`) that lasts until this
    /// unix ms: tried after the others, and not before then.
    BackingOff(u64),
    /// Cooling down after failures: skipped (unless every deployment is), and not asked
    /// before the end of a back-off its provider also asked for, if one runs (unix ms).
    Ejected {
        /// The end of the provider's back-off, if one runs.
        backed_off_until_ms: Option<u64>,
    },
}

/// What the host knows about deployments' recent behaviour.
pub trait HealthView {
    /// Whether the deployment is ejected (cooling down after failures) at this moment.
    fn is_ejected(&self, deployment_id: &str) -> bool;
    /// Recent latency in milliseconds, if observed.
    fn latency_ms(&self, deployment_id: &str) -> Option<f64>;
    /// Where the deployment stands (one read of its record where the host stores one).
    fn standing(&self, deployment_id: &str) -> Standing {
        if self.is_ejected(deployment_id) {
            Standing::Ejected {
                backed_off_until_ms: None,
            }
        } else {
            Standing::Healthy
        }
    }
}

/// A host with no observations: everything healthy, nothing measured.
pub struct NoHealth;

impl HealthView for NoHealth {
    fn is_ejected(&self, _: &str) -> bool {
        false
    }
    fn latency_ms(&self, _: &str) -> Option<f64> {
        None
    }
}

/// A stable id for a deployment, used by health tracking and metrics: `provider/model`.
pub fn deployment_id(d: &DeploymentConfig) -> String {
    format!("{}/{}", d.provider, d.model)
}

/// Orders `model`'s deployments for one request. Returns indices into `model.deployments`.
///
/// Ejected deployments are skipped, unless every deployment is ejected: then all are tried in
/// strategy order, since trying a cooling deployment beats failing outright. Deployments whose
/// provider asked for a back-off come after the others ([`ordered_attempts`] says until when).
pub fn attempt_order(model: &ModelConfig, health: &dyn HealthView, random: u64) -> Vec<usize> {
    ordered_attempts(model, health, random)
        .into_iter()
        .map(|(index, _)| index)
        .collect()
}

/// [`attempt_order`], each index with the end (unix ms) of its provider's back-off, if one
/// is running: the request must not ask that deployment before then.
pub fn ordered_attempts(
    model: &ModelConfig,
    health: &dyn HealthView,
    random: u64,
) -> Vec<(usize, Option<u64>)> {
    let deps = &model.deployments;
    if deps.len() == 1 {
        // One deployment is tried whatever its health says (an ejected one too, as when
        // every deployment is ejected): its record is not read (on the edge, a shared-data
        // host call and two formatted names per request on the common fast path).
        return vec![(0, None)];
    }
    let mut order: Vec<usize> = (0..deps.len()).collect();
    match model.strategy {
        Strategy::Priority => {}
        Strategy::Weighted => order = weighted_order(deps, random),
        Strategy::Cheapest => {
            order.sort_by(|&a, &b| blended_price(&deps[a]).total_cmp(&blended_price(&deps[b])))
        }
        Strategy::LowestLatency => order.sort_by(|&a, &b| {
            let la = health.latency_ms(&deployment_id(&deps[a])).unwrap_or(-1.0);
            let lb = health.latency_ms(&deployment_id(&deps[b])).unwrap_or(-1.0);
            la.total_cmp(&lb)
        }),
    }
    let standings: Vec<Standing> = order
        .iter()
        .map(|&i| health.standing(&deployment_id(&deps[i])))
        .collect();
    let healthy = order
        .iter()
        .zip(&standings)
        .filter(|(_, s)| **s == Standing::Healthy)
        .map(|(&i, _)| (i, None));
    let backing_off = order.iter().zip(&standings).filter_map(|(&i, s)| match s {
        Standing::BackingOff(until_ms) => Some((i, Some(*until_ms))),
        _ => None,
    });
    let usable: Vec<(usize, Option<u64>)> = healthy.chain(backing_off).collect();
    if !usable.is_empty() {
        return usable;
    }
    // Every deployment is ejected: all are tried, none before its provider's back-off ends.
    order
        .into_iter()
        .zip(standings)
        .map(|(i, s)| match s {
            Standing::Ejected {
                backed_off_until_ms,
            } => (i, backed_off_until_ms),
            Standing::BackingOff(until_ms) => (i, Some(until_ms)),
            Standing::Healthy => (i, None),
        })
        .collect()
}

/// A view that ignores providers' back-offs (a model whose `fallback.share_retry_after` is
/// off): a deployment backing off stands where its health puts it.
pub struct IgnoringBackOffs<'a>(pub &'a dyn HealthView);

impl HealthView for IgnoringBackOffs<'_> {
    fn is_ejected(&self, deployment_id: &str) -> bool {
        self.0.is_ejected(deployment_id)
    }
    fn latency_ms(&self, deployment_id: &str) -> Option<f64> {
        self.0.latency_ms(deployment_id)
    }
    fn standing(&self, deployment_id: &str) -> Standing {
        match self.0.standing(deployment_id) {
            Standing::BackingOff(_) => Standing::Healthy,
            Standing::Ejected { .. } => Standing::Ejected {
                backed_off_until_ms: None,
            },
            Standing::Healthy => Standing::Healthy,
        }
    }
}

/// Input plus output price per 1M tokens: the ordering key of the cheapest strategy.
fn blended_price(d: &DeploymentConfig) -> f64 {
    d.price.input + d.price.output
}

fn weighted_order(deps: &[DeploymentConfig], random: u64) -> Vec<usize> {
    let mut rng = SplitMix64(random);
    let mut pool: Vec<usize> = (0..deps.len()).collect();
    let mut out = Vec::with_capacity(pool.len());
    while !pool.is_empty() {
        let total: u64 = pool.iter().map(|&i| u64::from(deps[i].weight)).sum();
        let pick = if total == 0 {
            0
        } else {
            let mut r = rng.next() % total;
            pool.iter()
                .position(|&i| {
                    let w = u64::from(deps[i].weight);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
                .unwrap_or(0)
        };
        out.push(pool.remove(pick));
    }
    out
}

/// Small, fast PRNG; the host supplies the seed so the core needs no entropy source.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Price;
    use std::collections::HashMap;

    fn model(strategy: Strategy, deps: &[(&str, u32, f64)]) -> ModelConfig {
        ModelConfig {
            name: "m".into(),
            aliases: vec![],
            mode: None,
            strategy,
            fallback: None,
            queue: None,
            defaults: Default::default(),
            max_output_tokens: None,
            deployments: deps
                .iter()
                .map(|(p, w, price)| DeploymentConfig {
                    provider: p.to_string(),
                    model: "x".into(),
                    catalog: None,
                    catalog_entry: None,
                    weight: *w,
                    price: Price {
                        input: *price,
                        cached_input: None,
                        output: *price,
                        ..Price::default()
                    },
                    limits: None,
                })
                .collect(),
        }
    }

    struct Fake {
        ejected: Vec<&'static str>,
        latency: HashMap<&'static str, f64>,
    }
    impl HealthView for Fake {
        fn is_ejected(&self, id: &str) -> bool {
            self.ejected.contains(&id)
        }
        fn latency_ms(&self, id: &str) -> Option<f64> {
            self.latency.get(id).copied()
        }
    }

    #[test]
    fn priority_keeps_order_and_skips_ejected() {
        let m = model(
            Strategy::Priority,
            &[("a", 1, 0.0), ("b", 1, 0.0), ("c", 1, 0.0)],
        );
        assert_eq!(attempt_order(&m, &NoHealth, 0), vec![0, 1, 2]);
        let h = Fake {
            ejected: vec!["a/x"],
            latency: HashMap::new(),
        };
        assert_eq!(attempt_order(&m, &h, 0), vec![1, 2]);
        let all = Fake {
            ejected: vec!["a/x", "b/x", "c/x"],
            latency: HashMap::new(),
        };
        assert_eq!(attempt_order(&m, &all, 0), vec![0, 1, 2]);
    }

    #[test]
    fn deployments_backing_off_come_last_with_the_end_of_their_back_off() {
        struct Standings;
        impl HealthView for Standings {
            fn is_ejected(&self, id: &str) -> bool {
                id == "c/x"
            }
            fn latency_ms(&self, _: &str) -> Option<f64> {
                None
            }
            fn standing(&self, id: &str) -> Standing {
                match id {
                    "a/x" => Standing::BackingOff(5_000),
                    "c/x" => Standing::Ejected {
                        backed_off_until_ms: None,
                    },
                    "e/x" => Standing::Ejected {
                        backed_off_until_ms: Some(9_000),
                    },
                    _ => Standing::Healthy,
                }
            }
        }
        let m = model(
            Strategy::Priority,
            &[("a", 1, 0.0), ("b", 1, 0.0), ("c", 1, 0.0), ("d", 1, 0.0)],
        );
        assert_eq!(
            ordered_attempts(&m, &Standings, 0),
            vec![(1, None), (3, None), (0, Some(5_000))]
        );
        assert_eq!(attempt_order(&m, &Standings, 0), vec![1, 3, 0]);
        // Only ejected and backing-off ones: the one backing off is still the one to wait for.
        let m = model(Strategy::Priority, &[("a", 1, 0.0), ("c", 1, 0.0)]);
        assert_eq!(ordered_attempts(&m, &Standings, 0), vec![(0, Some(5_000))]);
        // Every one ejected: all are tried, the one whose provider also asked for a back-off
        // not before it ends.
        let m = model(Strategy::Priority, &[("c", 1, 0.0), ("e", 1, 0.0)]);
        assert_eq!(
            ordered_attempts(&m, &Standings, 0),
            vec![(0, None), (1, Some(9_000))]
        );
        // A model that does not share back-offs sees health alone.
        let m = model(
            Strategy::Priority,
            &[("a", 1, 0.0), ("b", 1, 0.0), ("e", 1, 0.0)],
        );
        assert_eq!(
            ordered_attempts(&m, &IgnoringBackOffs(&Standings), 0),
            vec![(0, None), (1, None)]
        );
    }

    #[test]
    fn cheapest_first() {
        let m = model(
            Strategy::Cheapest,
            &[("a", 1, 5.0), ("b", 1, 0.5), ("c", 1, 2.0)],
        );
        assert_eq!(attempt_order(&m, &NoHealth, 0), vec![1, 2, 0]);
    }

    #[test]
    fn lowest_latency_first_unobserved_earliest() {
        let m = model(
            Strategy::LowestLatency,
            &[("a", 1, 0.0), ("b", 1, 0.0), ("c", 1, 0.0)],
        );
        let h = Fake {
            ejected: vec![],
            latency: HashMap::from([("a/x", 300.0), ("b/x", 20.0)]),
        };
        assert_eq!(attempt_order(&m, &h, 0), vec![2, 1, 0]);
    }

    #[test]
    fn weighted_distribution_follows_weights() {
        let m = model(
            Strategy::Weighted,
            &[("a", 1, 0.0), ("b", 3, 0.0), ("z", 0, 0.0)],
        );
        let mut firsts = [0u32; 3];
        for seed in 0..20_000u64 {
            let order = attempt_order(&m, &NoHealth, seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            assert_eq!(order.len(), 3, "every deployment stays in the chain");
            firsts[order[0]] += 1;
        }
        let share_b = f64::from(firsts[1]) / 20_000.0;
        assert!((0.72..0.78).contains(&share_b), "b first {share_b}");
        assert_eq!(firsts[2], 0, "zero weight is never first");
    }
}
