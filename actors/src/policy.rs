//! Restart policies: which children restart, how often before giving up, and how long to wait.

use std::time::Duration;

/// When a child is restarted after it exits (OTP's `restart` child-spec field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartType {
    /// Always restarted, whether it exited normally or not.
    Permanent,
    /// Restarted only after an abnormal exit (an error, a panic or a kill).
    Transient,
    /// Never restarted.
    Temporary,
}

impl RestartType {
    /// Whether a child of this type is restarted after an exit that was `abnormal` or not.
    #[must_use]
    pub fn restarts_after(self, abnormal: bool) -> bool {
        match self {
            Self::Permanent => true,
            Self::Transient => abnormal,
            Self::Temporary => false,
        }
    }
}

/// Which children a supervisor restarts when one of them must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Only the child that exited.
    #[default]
    OneForOne,
    /// Every child: the others are stopped in reverse start order, then all start again in order.
    OneForAll,
    /// The child that exited and every child started after it.
    RestForOne,
}

/// Restart intensity: more than `max_restarts` restarts within `period` makes the supervisor
/// stop its children and fail, escalating to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts tolerated within `period`.
    pub max_restarts: u32,
    /// The sliding window restarts are counted in.
    pub period: Duration,
}

impl Default for Intensity {
    /// Five restarts in ten seconds: tolerant of a burst, quick to give up on a crash loop.
    fn default() -> Self {
        Self {
            max_restarts: 5,
            period: Duration::from_secs(10),
        }
    }
}

/// Capped exponential backoff with jitter between restarts of the same child.
///
/// The first restart within the intensity window is immediate; the n-th one after that waits
/// `initial * 2^(n-1)`, capped at `max`, then spread by ±`jitter` (a fraction) so that
/// children failing together do not restart in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the second restart in a window.
    pub initial: Duration,
    /// Upper bound of any delay.
    pub max: Duration,
    /// Fraction of the delay added or removed at random, between 0 and 1.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// No delay at all: every restart is immediate.
    #[must_use]
    pub fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// The delay before a restart, given how many restarts of the same child already happened
    /// within the current window.
    #[must_use]
    pub fn delay(&self, previous_restarts: usize) -> Duration {
        if previous_restarts == 0 || self.initial.is_zero() {
            return Duration::ZERO;
        }
        let exponent = u32::try_from(previous_restarts - 1)
            .unwrap_or(u32::MAX)
            .min(32);
        let base = self
            .initial
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return base;
        }
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        base.mul_f64(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
            jitter: 0.0,
        };
        let delays: Vec<_> = (0..6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![0, 100, 200, 400, 500, 500]);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            jitter: 0.25,
        };
        for _ in 0..1000 {
            let d = backoff.delay(1).as_millis();
            assert!((750..=1250).contains(&d), "{d}");
        }
        for _ in 0..100 {
            let capped = backoff.delay(200);
            assert!(capped <= Duration::from_secs(60), "{capped:?}");
            assert!(capped >= Duration::from_secs(45), "{capped:?}");
        }
    }

    #[test]
    fn restart_types_follow_otp() {
        assert!(RestartType::Permanent.restarts_after(false));
        assert!(RestartType::Permanent.restarts_after(true));
        assert!(!RestartType::Transient.restarts_after(false));
        assert!(RestartType::Transient.restarts_after(true));
        assert!(!RestartType::Temporary.restarts_after(true));
    }
}
