//! The open model's timetable: when each request is meant to be sent.
//!
//! Request `index` (0-based, counted over the whole run and every connection) has an intended
//! send time computed from its index alone, never by adding intervals, so rounding cannot
//! accumulate and a run of a million requests at 1000/s ends at exactly 1000 s:
//!
//! ```text
//!   index < burst            t = 0                         (the crowd at the opening bell)
//!   k = index - burst
//!   k < rate*ramp/2          t = sqrt(2*k*ramp/rate)       (rate grows linearly 0 → rate)
//!   otherwise                t = ramp + (k - rate*ramp/2) / rate
//! ```
//!
//! A connection that is free takes the next index and sleeps until its intended time; one
//! that is late sends at once. Latency is measured from the intended time (as wrk2 does), so
//! a stalled server shows its stall in every request that should have gone out meanwhile:
//! this is the correction for coordinated omission.

use std::time::Duration;

/// Lowest and highest accepted arrival rates, requests per second.
pub const RATE_MIN_PER_S: f64 = 0.001;
pub const RATE_MAX_PER_S: f64 = 100_000_000.0;
/// Most requests accepted in the opening burst.
pub const BURST_MAX: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenSchedule {
    rate_per_s: f64,
    ramp_up_s: f64,
    burst: u64,
}

impl OpenSchedule {
    /// `rate_per_s` is the steady arrival rate, reached linearly over `ramp_up`; `burst`
    /// requests are due at time zero before the steady arrivals begin.
    pub fn new(rate_per_s: f64, ramp_up: Duration, burst: u64) -> Result<Self, String> {
        if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
            return Err(format!(
                "the open model needs a positive rate, got {rate_per_s}"
            ));
        }
        // Bounds that keep every intended time and request count far from overflow (a tiny
        // rate puts request k at k/rate seconds; a huge burst or rate overflows the counts).
        if !(RATE_MIN_PER_S..=RATE_MAX_PER_S).contains(&rate_per_s) {
            return Err(format!(
                "rate {rate_per_s} is out of range: give {RATE_MIN_PER_S}..={RATE_MAX_PER_S} requests per second"
            ));
        }
        if burst > BURST_MAX {
            return Err(format!(
                "burst {burst} is out of range: give at most {BURST_MAX} requests"
            ));
        }
        Ok(Self {
            rate_per_s,
            ramp_up_s: ramp_up.as_secs_f64(),
            burst,
        })
    }

    pub fn rate_per_s(&self) -> f64 {
        self.rate_per_s
    }

    /// Requests due while the rate ramps up (after the burst).
    fn ramp_count(&self) -> f64 {
        self.rate_per_s * self.ramp_up_s / 2.0
    }

    /// Intended send time of request `index`, as an offset from the start of the run.
    pub fn intended_offset(&self, index: u64) -> Duration {
        if index < self.burst {
            return Duration::ZERO;
        }
        let k = (index - self.burst) as f64;
        let seconds = if k < self.ramp_count() {
            (2.0 * k * self.ramp_up_s / self.rate_per_s).sqrt()
        } else {
            self.ramp_up_s + (k - self.ramp_count()) / self.rate_per_s
        };
        Duration::from_secs_f64(seconds)
    }

    /// How many requests are due strictly before `offset`: what a run that ends at `offset`
    /// should have sent. The inverse of [`OpenSchedule::intended_offset`].
    pub fn due_before(&self, offset: Duration) -> u64 {
        let t = offset.as_secs_f64();
        if t <= 0.0 {
            return 0;
        }
        let steady = if t <= self.ramp_up_s {
            // Solve t = sqrt(2k*ramp/rate) for k, then count indices 0..=floor (strictly below
            // t means k < k_t).
            self.rate_per_s * t * t / (2.0 * self.ramp_up_s)
        } else {
            self.ramp_count() + (t - self.ramp_up_s) * self.rate_per_s
        };
        let mut count = self.burst + steady.ceil() as u64;
        // Float rounding may put the boundary index on either side; settle it exactly with
        // the forward formula, which is what the connections use.
        while count > 0 && self.intended_offset(count - 1) >= offset {
            count -= 1;
        }
        while self.intended_offset(count) < offset {
            count += 1;
        }
        count
    }
}

/// Closed model ramp-up: connection `index` of `count` starts at `ramp_up * index / count`, so
/// the number of busy connections grows linearly to `count`.
pub fn closed_start_offset(index: usize, count: usize, ramp_up: Duration) -> Duration {
    if count == 0 {
        return Duration::ZERO;
    }
    ramp_up.mul_f64(index as f64 / count as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Duration, b: Duration, tolerance: Duration) -> bool {
        a.abs_diff(b) <= tolerance
    }

    #[test]
    fn steady_schedule_spaces_requests_evenly_from_zero() {
        let schedule = OpenSchedule::new(1000.0, Duration::ZERO, 0).unwrap();
        assert_eq!(schedule.intended_offset(0), Duration::ZERO);
        assert_eq!(schedule.intended_offset(1), Duration::from_millis(1));
        assert_eq!(schedule.intended_offset(2500), Duration::from_millis(2500));
    }

    #[test]
    fn schedule_does_not_drift_over_a_long_run() {
        // 10 million requests at 7919/s: a schedule built by adding 1/7919 s each time drifts
        // by float error; this one is computed from the index and stays on time.
        let rate = 7919.0;
        let schedule = OpenSchedule::new(rate, Duration::ZERO, 0).unwrap();
        let index = 10_000_000u64;
        let expected = Duration::from_secs_f64(index as f64 / rate);
        assert!(close(
            schedule.intended_offset(index),
            expected,
            Duration::from_nanos(2)
        ));
        // And every interval is the same within a nanosecond of rounding.
        let interval = Duration::from_secs_f64(1.0 / rate);
        for i in (index - 1000)..index {
            let step = schedule.intended_offset(i + 1) - schedule.intended_offset(i);
            assert!(
                close(step, interval, Duration::from_nanos(2)),
                "step {step:?}"
            );
        }
    }

    #[test]
    fn ramp_up_grows_the_rate_linearly_then_holds_it() {
        let schedule = OpenSchedule::new(1000.0, Duration::from_secs(10), 0).unwrap();
        // Half the steady count is due during the ramp: 1000/s * 10 s / 2.
        assert_eq!(schedule.due_before(Duration::from_secs(10)), 5000);
        // In the first second of a linear ramp to 1000/s over 10 s: 1000 * 1 / (2 * 10) = 50.
        assert_eq!(schedule.due_before(Duration::from_secs(1)), 50);
        // After the ramp, exactly the steady rate.
        assert_eq!(
            schedule.due_before(Duration::from_secs(12))
                - schedule.due_before(Duration::from_secs(11)),
            1000
        );
        // Intended times never go backwards.
        let mut previous = Duration::ZERO;
        for index in 0..20_000 {
            let t = schedule.intended_offset(index);
            assert!(t >= previous);
            previous = t;
        }
    }

    #[test]
    fn burst_requests_are_all_due_at_time_zero() {
        let schedule = OpenSchedule::new(100.0, Duration::ZERO, 500).unwrap();
        assert_eq!(schedule.intended_offset(499), Duration::ZERO);
        assert_eq!(schedule.intended_offset(500), Duration::ZERO);
        assert_eq!(schedule.intended_offset(501), Duration::from_millis(10));
        assert_eq!(schedule.due_before(Duration::from_nanos(1)), 501);
        assert_eq!(schedule.due_before(Duration::from_secs(1)), 600);
    }

    #[test]
    fn due_before_is_the_inverse_of_intended_offset() {
        let schedule = OpenSchedule::new(333.3, Duration::from_millis(1500), 7).unwrap();
        for index in 0..5000 {
            let t = schedule.intended_offset(index);
            assert!(schedule.due_before(t) <= index);
            assert!(schedule.due_before(t + Duration::from_nanos(1)) > index);
        }
    }

    #[test]
    fn open_schedule_refuses_a_rate_that_is_not_positive() {
        assert!(OpenSchedule::new(0.0, Duration::ZERO, 0).is_err());
        assert!(OpenSchedule::new(f64::NAN, Duration::ZERO, 0).is_err());
    }

    #[test]
    fn closed_connections_start_evenly_over_the_ramp() {
        let ramp = Duration::from_secs(4);
        assert_eq!(closed_start_offset(0, 4, ramp), Duration::ZERO);
        assert_eq!(closed_start_offset(2, 4, ramp), Duration::from_secs(2));
        assert_eq!(closed_start_offset(3, 4, Duration::ZERO), Duration::ZERO);
    }
}
