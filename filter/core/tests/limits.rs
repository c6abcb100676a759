//! Property tests for admission: any interleaving of admissions, settlements and releases
//! keeps spend within the budget and leaves nothing held once every request has ended.

use proptest::prelude::*;
use switchyard_core::limits::{
    admit, budget_state, in_flight, usd_to_nano, Admission, Budget, Estimate, MemoryCounters,
    Period, Quota, Scope,
};

const T0: u64 = 1_764_806_400_000;

#[derive(Debug, Clone)]
enum Op {
    /// Admit a request estimated at `est` milli-dollars that will really cost `frac`% of it.
    Admit { est: u32, frac: u8 },
    /// Settle the in-flight request at this index (modulo).
    Settle(usize),
    /// Release (refusal further on) the in-flight request at this index.
    Release(usize),
    /// Time passes.
    Tick(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..400, 0u8..=100).prop_map(|(est, frac)| Op::Admit { est, frac }),
        3 => any::<usize>().prop_map(Op::Settle),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0u32..5_000).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]
    #[test]
    fn budgets_never_overshoot_and_nothing_leaks(ops in prop::collection::vec(op(), 1..80)) {
        let store = MemoryCounters::default();
        let quota = Quota {
            rpm: Some(30),
            tpm: Some(5_000),
            concurrent: Some(4),
            budget: Some(Budget { usd: 1.0, period: Period::Total }),
        };
        let scopes = [Scope::key("k", &quota), Scope::team("t", &Quota {
            concurrent: Some(3), ..Quota::default() })];
        let mut now = T0;
        let mut held: Vec<(Admission, i64)> = Vec::new();
        let mut spent = 0i64;
        for op in ops {
            match op {
                Op::Admit { est, frac } => {
                    let estimate = Estimate { tokens: u64::from(est), cost_nano: i64::from(est) * 1_000_000 };
                    if let Ok(admission) = admit(&store, &scopes, estimate, now) {
                        let actual = estimate.cost_nano * i64::from(frac) / 100;
                        held.push((admission, actual));
                    }
                }
                Op::Settle(i) if !held.is_empty() => {
                    let (admission, actual) = held.remove(i % held.len());
                    admission.settle(&store, 10, actual, now);
                    spent += actual;
                }
                Op::Release(i) if !held.is_empty() => {
                    let (mut admission, _) = held.remove(i % held.len());
                    admission.release(&store, now);
                }
                Op::Tick(ms) => now += u64::from(ms),
                _ => {}
            }
            let (stored_spent, reserved) = budget_state(&store, &scopes[0], now).unwrap();
            prop_assert_eq!(stored_spent, spent);
            prop_assert!(stored_spent + reserved <= usd_to_nano(1.0), "over budget: {} + {}", stored_spent, reserved);
            prop_assert!(in_flight(&store, &scopes[0]) <= 4 && in_flight(&store, &scopes[1]) <= 3);
            prop_assert_eq!(in_flight(&store, &scopes[0]), held.len() as u64);
        }
        for (admission, actual) in held.drain(..) {
            admission.settle(&store, 10, actual, now);
        }
        let (_, reserved) = budget_state(&store, &scopes[0], now).unwrap();
        prop_assert_eq!(reserved, 0, "a reservation leaked");
        prop_assert_eq!(in_flight(&store, &scopes[0]), 0);
        prop_assert_eq!(in_flight(&store, &scopes[1]), 0);
    }
}
