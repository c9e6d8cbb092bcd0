//! Balancing: which upstream a new session or a stateless request goes to. A shard's own
//! state (no atomics). Sessions never come here again: they stay where they started.

use std::cell::RefCell;
use std::rc::Rc;

use super::pool::Pool;

/// Chooses an upstream for a new session or a stateless request (a shard's own state: no
/// atomics). Sessions never come here again: they stay where they started.
pub struct Balancer {
    strategy: crate::config::Strategy,
    weights: Vec<i64>,
    /// Smooth weighted round robin: each upstream's running credit.
    credit: RefCell<Vec<i64>>,
}

impl Balancer {
    pub fn new(strategy: crate::config::Strategy, weights: Vec<u32>) -> Balancer {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        Balancer {
            strategy,
            credit: RefCell::new(vec![0; weights.len()]),
            weights,
        }
    }

    /// Whether `pick` uses the client (the `sticky` strategy).
    pub fn by_client(&self) -> bool {
        self.strategy == crate::config::Strategy::Sticky
    }

    /// An upstream not in `tried` and `usable` (healthy, breaker admitting), or `None` when
    /// there is none. `client` is the client's cell (for `sticky`).
    pub fn pick(
        &self,
        pools: &[Rc<Pool>],
        client: u32,
        tried: &[usize],
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let open = |i: &usize| !tried.contains(i) && usable(*i);
        let n = self.weights.len();
        match self.strategy {
            crate::config::Strategy::RoundRobin => {
                let mut credit = self.credit.borrow_mut();
                let mut total = 0;
                let mut best: Option<usize> = None;
                for i in (0..n).filter(open) {
                    credit[i] += self.weights[i];
                    total += self.weights[i];
                    if best.is_none_or(|b| credit[i] > credit[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                credit[b] -= total;
                Some(b)
            }
            crate::config::Strategy::LeastConnections => (0..n)
                .filter(open)
                .min_by_key(|&i| (pools[i].in_use() as i64 * 1000) / self.weights[i]),
            crate::config::Strategy::Sticky => {
                let total: i64 = self.weights.iter().sum();
                let mut at = i64::from(client) % total.max(1);
                let home = (0..n)
                    .find(|&i| {
                        at -= self.weights[i];
                        at < 0
                    })
                    .unwrap_or(0);
                (0..n).map(|k| (home + k) % n).find(open)
            }
        }
    }
}

#[cfg(test)]
mod balancer_tests {
    use super::*;
    use crate::config::Strategy;
    use crate::metrics::ShardStats;
    use std::sync::Arc;

    fn pools(n: usize) -> Vec<Rc<Pool>> {
        (0..n)
            .map(|i| {
                let cfg = crate::config::UpstreamConfig {
                    addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    authority: String::new(),
                    path: "/mcp".into(),
                    authorization: None,
                    pool_max_idle: 1,
                    pool_max_connections: 1,
                    pool_idle_timeout: std::time::Duration::from_secs(1),
                    weight: 1,
                    health: crate::config::HealthConfig {
                        kind: crate::config::ProbeKind::Off,
                        path: "/mcp".into(),
                        interval: std::time::Duration::from_secs(1),
                        timeout: std::time::Duration::from_secs(1),
                        healthy_threshold: 1,
                        unhealthy_threshold: 1,
                        breaker_failures: 1,
                        breaker_open: std::time::Duration::from_secs(1),
                        breaker_half_open_requests: 1,
                    },
                };
                let stats = Arc::new(ShardStats::new(0));
                Rc::new(Pool::new(cfg, std::time::Duration::from_secs(1), stats))
            })
            .collect()
    }

    fn all(_: usize) -> bool {
        true
    }

    #[test]
    fn unusable_upstreams_are_never_picked() {
        let p = pools(3);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::LeastConnections,
            Strategy::Sticky,
        ] {
            let b = Balancer::new(strategy, vec![1, 1, 1]);
            let not_one = |i: usize| i != 1;
            assert!((0..300u32).all(|c| b.pick(&p, c, &[], &not_one) != Some(1)));
            assert_eq!(b.pick(&p, 7, &[0, 2], &not_one), None);
        }
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_skips_tried() {
        let p = pools(3);
        let b = Balancer::new(Strategy::RoundRobin, vec![2, 1, 1]);
        let seq: Vec<usize> = (0..8).map(|_| b.pick(&p, 0, &[], &all).unwrap()).collect();
        // Interleaved, not 0,0,1,2: each cycle of 4 gives upstream 0 its two turns apart.
        assert_eq!(seq, [0, 1, 2, 0, 0, 1, 2, 0]);
        assert_ne!(b.pick(&p, 0, &[0], &all), Some(0));
        assert_eq!(b.pick(&p, 0, &[0, 1, 2], &all), None);
    }

    #[test]
    fn sticky_keeps_a_client_on_its_upstream_until_it_is_tried() {
        let p = pools(3);
        let b = Balancer::new(Strategy::Sticky, vec![1, 1, 1]);
        let home = b.pick(&p, 12345, &[], &all).unwrap();
        assert!((0..10).all(|_| b.pick(&p, 12345, &[], &all) == Some(home)));
        let next = b.pick(&p, 12345, &[home], &all).unwrap();
        assert_ne!(next, home);
        let spread: std::collections::HashSet<usize> = (0..300u32)
            .filter_map(|c| b.pick(&p, c, &[], &all))
            .collect();
        assert_eq!(spread.len(), 3);
    }
}
