//! Runaway probes: a probe with `disable_above` that fires faster than that is detached, so a
//! probe on a hot function cannot eat the host. The rate is measured from BPF's own hit
//! counter (every firing, delivered or not), once per check interval.

use std::{collections::HashMap, time::Instant};

/// How hits per second are measured per probe between checks.
#[derive(Debug, Default)]
pub struct RateMeter {
    /// Probe id → (hit count, when) at the previous check.
    last: HashMap<u32, (u64, Instant)>,
}

impl RateMeter {
    /// Records `hits` for probe `id` at `now`; returns the rate since the previous record, or
    /// `None` for the first.
    pub fn rate(&mut self, id: u32, hits: u64, now: Instant) -> Option<f64> {
        let previous = self.last.insert(id, (hits, now));
        let (before, then) = previous?;
        let secs = now.duration_since(then).as_secs_f64();
        (secs > 0.0).then(|| hits.saturating_sub(before) as f64 / secs)
    }

    /// Forgets probe `id` (removed; its id may be reused).
    pub fn forget(&mut self, id: u32) {
        self.last.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Rates are hits over elapsed time since the previous record; a forgotten probe starts
    /// over.
    #[test]
    fn rates() {
        let mut m = RateMeter::default();
        let t0 = Instant::now();
        assert_eq!(m.rate(1, 100, t0), None);
        let r = m.rate(1, 1100, t0 + Duration::from_millis(500)).unwrap();
        assert!((r - 2000.0).abs() < 1e-6, "{r}");
        m.forget(1);
        assert_eq!(m.rate(1, 5, t0 + Duration::from_secs(1)), None);
        // A counter reset (id reused) reads as zero, never negative.
        let r = m.rate(1, 0, t0 + Duration::from_secs(2)).unwrap();
        assert!(r.abs() < f64::EPSILON);
    }
}
