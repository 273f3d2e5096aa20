//! Health: the pure threshold state machine of one node ([`HealthState`]) and the `/version`
//! probe ([`probe`]). The task that runs probes and owns the states is `node::manager`.
pub mod probe;

/// What the balancer believes about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Added but not checked yet: takes no traffic until its first check passes.
    Unknown,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Consecutive failures that take a healthy node out.
    pub unhealthy: u32,
    /// Consecutive successes that bring an unhealthy node back.
    pub healthy: u32,
}

#[derive(Clone, Debug)]
pub(crate) struct HealthState {
    health: Health,
    /// Consecutive results against the current state (failures while healthy, successes while
    /// unhealthy); reset by a result that agrees with it.
    streak: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState { health: Health::Unknown, streak: 0 }
    }
}

impl HealthState {
    pub(crate) fn health(&self) -> Health {
        self.health
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }

    /// Folds one check result in. Returns the new health when it changed.
    pub(crate) fn observe(&mut self, passed: bool, t: Thresholds) -> Option<Health> {
        let next = match (self.health, passed) {
            // The first result decides an unknown node at once.
            (Health::Unknown, true) => Health::Healthy,
            (Health::Unknown, false) => Health::Unhealthy,
            (Health::Healthy, true) | (Health::Unhealthy, false) => {
                self.streak = 0;
                return None;
            }
            (Health::Healthy, false) => {
                self.streak += 1;
                if self.streak < t.unhealthy {
                    return None;
                }
                Health::Unhealthy
            }
            (Health::Unhealthy, true) => {
                self.streak += 1;
                if self.streak < t.healthy {
                    return None;
                }
                Health::Healthy
            }
        };
        self.health = next;
        self.streak = 0;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { unhealthy: 2, healthy: 1 };

    #[test]
    fn new_node_is_decided_by_its_first_check() {
        let mut s = HealthState::default();
        assert_eq!(s.health(), Health::Unknown);
        assert_eq!(s.observe(true, T), Some(Health::Healthy));
        let mut s = HealthState::default();
        assert_eq!(s.observe(false, T), Some(Health::Unhealthy));
    }

    #[test]
    fn unhealthy_after_two_failed_checks() {
        let mut s = HealthState::default();
        s.observe(true, T);
        assert_eq!(s.observe(false, T), None);
        assert!(s.is_healthy());
        assert_eq!(s.observe(false, T), Some(Health::Unhealthy));
    }

    #[test]
    fn a_pass_between_failures_resets_the_count() {
        let mut s = HealthState::default();
        s.observe(true, T);
        s.observe(false, T);
        s.observe(true, T);
        assert_eq!(s.observe(false, T), None);
        assert!(s.is_healthy());
    }

    #[test]
    fn healthy_again_after_the_healthy_threshold() {
        let t = Thresholds { unhealthy: 1, healthy: 3 };
        let mut s = HealthState::default();
        s.observe(false, t);
        assert_eq!(s.observe(true, t), None);
        assert_eq!(s.observe(true, t), None);
        assert_eq!(s.observe(true, t), Some(Health::Healthy));
    }

    #[test]
    fn state_changes_are_reported_once() {
        let mut s = HealthState::default();
        s.observe(false, T);
        for _ in 0..5 {
            assert_eq!(s.observe(false, T), None);
        }
    }
}
