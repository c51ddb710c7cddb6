//! Shedding by queueing delay: the gate that keeps a CPU-bound server answering quickly.
//!
//! The other bounds fill only when requests pile up behind the shards (a full mailbox, the
//! in-flight bound). When the HTTP layer itself is the bottleneck (more buyers than CPU),
//! nothing fills: each HTTP/1.1 connection carries one request at a time, and the excess waits
//! for a worker thread instead, in the runtime's ready queue and the sockets' buffers. No
//! counter sees it, but every answer gets slower, and the crowd's own backlog grows without
//! bound. This gate measures that wait and refuses a share of new work while it is long, so
//! what is admitted is answered within a small multiple of the target and the rest learns at
//! once (503 `overloaded`, `Retry-After`) that it should come back later.
//!
//! **Signal.** A probe task wakes every [`QUEUE_DELAY_PROBE_INTERVAL`], yields, and times how long until
//! the runtime polls it again: the time to get through the ready tasks ahead of it, which is
//! the delay a connection whose request just arrived is seeing. The other half is the shards'
//! own queue: how long orders wait in a shard's mailbox beyond the turn in progress (an order
//! that arrives during a turn waits for that turn's fdatasync, which is the group commit's
//! service time and no refusal shortens; one that a full turn left behind is a standing
//! queue, and shows here long before the mailbox fills). The queue delay is the larger
//! of the scheduling delay (averaged over each [`QUEUE_DELAY_UPDATE_INTERVAL`]) and that wait (the most
//! in the interval).
//!
//! **Control law** (after PIE, RFC 8033 §4.2, whose update interval of 15 ms and gains
//! α = 0.125, β = 1.25 per second are the starting point): every update, the shed
//! probability moves by `α·(delay − target) + β·(delay − previous delay)`: up while the delay
//! is over the target, faster while it grows. Requests are a coarser and more expensive unit
//! than packets, so the gains here are `GAIN` times RFC 8033's: once the burst allowance is
//! spent, a queue at 3× the target is met with a share of a third within about 300 ms. One departure from PIE, for "recovers at once": while the
//! delay is under half the target the probability halves every update (PIE decays by 2%
//! only when the queue is empty), so shedding stops within about 100 ms of the load dropping.
//!
//! **Who is shed.** New orders at the probability `p`, evenly spaced (a ticket counter, not a
//! coin: at p = 0.25 exactly every fourth); actions on existing orders (a payment, a cancel)
//! only at `2p − 1`, once more than half the new orders are refused, because they finish
//! work already done (the stock is held). `p` never passes [`QUEUE_DELAY_SHED_MAX`], so some orders are
//! always admitted and the sale progresses. `Retry-After` is spread over
//! `1..=⌈1 / (1 − p)⌉` seconds (at most [`QUEUE_DELAY_RETRY_AFTER_MAX_S`]): when the server takes only a
//! share `1 − p` of what arrives, the refused retries must come back spread over that many
//! seconds to find room, not all in the next one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::http::reply::RetryAfter;
use crate::limits::{
    QUEUE_DELAY_BURST_ALLOWANCE, QUEUE_DELAY_PROBE_INTERVAL, QUEUE_DELAY_RETRY_AFTER_MAX_S,
    QUEUE_DELAY_SHED_MAX, QUEUE_DELAY_UPDATE_INTERVAL,
};

/// RFC 8033's gains (per second of delay error), scaled by [`GAIN`].
const ALPHA: f64 = 0.125;
const BETA: f64 = 1.25;
/// How much faster than PIE's defaults the probability moves: at ×4 a delay 20 ms over the
/// target adds 1% per update (0.67 a second), and a jump of 20 ms adds 10% at once.
const GAIN: f64 = 4.0;
/// PIE's safeguard (RFC 8033 §4.1, there at half the target): under the target, shed only if
/// the probability is past this.
const SAFEGUARD_P: f64 = 0.2;

/// Probabilities are kept in millionths, so the request path reads one integer.
const PPM: u64 = 1_000_000;

/// The control law alone (no clock, no atomics), so it can be tested step by step.
#[derive(Debug, Clone)]
pub struct Controller {
    target_s: f64,
    probability: f64,
    /// The delay the last update saw (PIE's `qdelay_old` in the next one).
    last_delay_s: f64,
    /// Seconds of standing queue still tolerated before anything is shed (PIE's burst
    /// allowance): refilled to [`QUEUE_DELAY_BURST_ALLOWANCE`] whenever the queue is short again.
    burst_allowance_s: f64,
}

impl Controller {
    pub fn new(target: Duration) -> Self {
        Self {
            target_s: target.as_secs_f64(),
            probability: 0.0,
            last_delay_s: 0.0,
            burst_allowance_s: QUEUE_DELAY_BURST_ALLOWANCE.as_secs_f64(),
        }
    }

    /// One update with the delay measured over the last interval; returns the share of new
    /// orders to shed from now on. Updates are meant to come every [`QUEUE_DELAY_UPDATE_INTERVAL`].
    pub fn update(&mut self, delay: Duration) -> f64 {
        self.update_after(delay, QUEUE_DELAY_UPDATE_INTERVAL)
    }

    /// [`Controller::update`] when `elapsed` has passed since the last one: a busy runtime
    /// runs the probe late, and the allowance and the integral term follow the clock, not
    /// the count of updates (the integral's step is capped at 10 intervals).
    pub fn update_after(&mut self, delay: Duration, elapsed: Duration) -> f64 {
        let steps =
            (elapsed.as_secs_f64() / QUEUE_DELAY_UPDATE_INTERVAL.as_secs_f64()).clamp(0.0, 10.0);
        let delay_s = delay.as_secs_f64();
        let half_target = self.target_s / 2.0;
        let short_queue = delay_s < half_target && self.last_delay_s < half_target;
        if short_queue {
            // The queue is short and was short: forget the overload quickly.
            self.probability *= 0.5;
            if self.probability < 0.001 {
                self.probability = 0.0;
            }
        } else if self.burst_allowance_s > 0.0 {
            // Within a burst's allowance nothing is shed, and nothing is integrated either:
            // a probability built up while it was not applied would start at the cap the
            // moment the allowance ends, far past what the load calls for.
        } else {
            self.probability += GAIN
                * (steps * ALPHA * (delay_s - self.target_s)
                    + BETA * (delay_s - self.last_delay_s));
            self.probability = self.probability.clamp(0.0, QUEUE_DELAY_SHED_MAX);
        }
        if short_queue && self.probability == 0.0 {
            self.burst_allowance_s = QUEUE_DELAY_BURST_ALLOWANCE.as_secs_f64();
        } else {
            self.burst_allowance_s = (self.burst_allowance_s - elapsed.as_secs_f64()).max(0.0);
        }
        self.last_delay_s = delay_s;
        self.effective()
    }

    /// The share applied to new orders: nothing during a burst's allowance, nor while the
    /// delay is under the target and the probability is low (a passing spike, not a
    /// standing queue).
    pub fn effective(&self) -> f64 {
        if self.burst_allowance_s > 0.0
            || (self.last_delay_s < self.target_s && self.probability < SAFEGUARD_P)
        {
            0.0
        } else {
            self.probability
        }
    }
}

/// What the request path reads and the probe writes.
pub struct QueueDelayGate {
    target: Duration,
    /// Shed probability for new orders, millionths.
    probability_ppm: AtomicU32,
    /// The last measured queue delay, µs (for `/metrics` and the shed answer's detail).
    delay_us: AtomicU64,
    /// Tickets for evenly spaced shedding: request k is shed when the running sum of the
    /// probability crosses a whole number at k.
    order_tickets: AtomicU64,
    action_tickets: AtomicU64,
}

impl QueueDelayGate {
    /// `None` when `target` is zero (the gate is off).
    pub fn new(target: Duration) -> Option<Self> {
        (!target.is_zero()).then(|| Self {
            target,
            probability_ppm: AtomicU32::new(0),
            delay_us: AtomicU64::new(0),
            order_tickets: AtomicU64::new(0),
            action_tickets: AtomicU64::new(0),
        })
    }

    pub fn target(&self) -> Duration {
        self.target
    }

    /// The shed probability for new orders now (0..=`QUEUE_DELAY_SHED_MAX`).
    pub fn probability(&self) -> f64 {
        f64::from(self.probability_ppm.load(Ordering::Relaxed)) / PPM as f64
    }

    /// The queue delay the last update saw.
    pub fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    fn publish(&self, probability: f64, delay: Duration) {
        self.probability_ppm
            .store((probability * PPM as f64) as u32, Ordering::Relaxed);
        self.delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Admits a new order, or says when to come back.
    pub fn admit_order(&self) -> Result<(), RetryAfter> {
        let ppm = u64::from(self.probability_ppm.load(Ordering::Relaxed));
        Self::take_ticket(&self.order_tickets, ppm)
    }

    /// Admits an action on an existing order (shed only past half the new orders).
    pub fn admit_action(&self) -> Result<(), RetryAfter> {
        let ppm = u64::from(self.probability_ppm.load(Ordering::Relaxed));
        Self::take_ticket(&self.action_tickets, (2 * ppm).saturating_sub(PPM))
    }

    fn take_ticket(tickets: &AtomicU64, ppm: u64) -> Result<(), RetryAfter> {
        if ppm == 0 {
            return Ok(());
        }
        let before = tickets.fetch_add(ppm, Ordering::Relaxed);
        let after = before.wrapping_add(ppm);
        if after / PPM == before / PPM {
            return Ok(());
        }
        // Spread the retries over ⌈1 / (1 − p)⌉ seconds; the ticket picks the second.
        let admitted_share = (PPM - ppm.min(PPM - 1)) as f64 / PPM as f64;
        let spread = ((1.0 / admitted_share).ceil() as u64)
            .clamp(1, u64::from(QUEUE_DELAY_RETRY_AFTER_MAX_S));
        Err(RetryAfter(1 + (after / PPM % spread) as u32))
    }

    /// Measures and updates until `stopping` turns true. `mailbox_wait` is how long orders
    /// queue in the shards' mailboxes beyond the turn in progress ([`crate::engine::Engine::mailbox_wait`];
    /// zero before the engine is up).
    pub async fn run_probe(
        &self,
        mailbox_wait: impl Fn() -> Duration,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut controller = Controller::new(self.target);
        let mut interval = tokio::time::interval(QUEUE_DELAY_PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let samples_per_update = (QUEUE_DELAY_UPDATE_INTERVAL.as_micros()
            / QUEUE_DELAY_PROBE_INTERVAL.as_micros())
        .max(1);
        let mut sum = Duration::ZERO;
        let mut samples = 0u32;
        let mut last_update = Instant::now();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
            let asked = Instant::now();
            tokio::task::yield_now().await;
            sum += asked.elapsed();
            samples += 1;
            if u128::from(samples) >= samples_per_update {
                let scheduling = sum / samples;
                let delay = scheduling.max(mailbox_wait());
                let now = Instant::now();
                let probability = controller.update_after(delay, now - last_update);
                last_update = now;
                self.publish(probability, delay);
                sum = Duration::ZERO;
                samples = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(20);

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn a_standing_queue_over_the_target_raises_the_probability_until_it_is_gone() {
        let mut controller = Controller::new(TARGET);
        // Under the target: nothing is shed.
        for _ in 0..100 {
            assert_eq!(controller.update(ms(5)), 0.0);
        }
        // 3x the target for a while: the probability climbs, within a second, high.
        let mut probability = 0.0;
        for step in 0..66 {
            let next = controller.update(ms(60));
            assert!(next >= probability, "step {step}: {next} < {probability}");
            probability = next;
        }
        assert!(
            probability > 0.5,
            "after 1 s at 3x the target: {probability}"
        );
        assert!(probability <= QUEUE_DELAY_SHED_MAX);
        // At the target it holds; under half of it, it is gone within ~100 ms.
        let held = controller.update(TARGET);
        assert!(held > 0.4, "{held}");
        let mut steps = 0;
        while controller.update(ms(2)) > 0.0 {
            steps += 1;
            assert!(steps < 10, "still shedding after {steps} updates");
        }
    }

    #[test]
    fn a_burst_within_the_allowance_is_served_and_the_allowance_returns_once_it_clears() {
        let allowance_updates = (QUEUE_DELAY_BURST_ALLOWANCE.as_micros()
            / QUEUE_DELAY_UPDATE_INTERVAL.as_micros()) as usize;
        let mut controller = Controller::new(TARGET);
        for round in 0..2 {
            // A burst of 5x the target that clears within the allowance: nothing shed.
            for step in 0..allowance_updates - 1 {
                assert_eq!(controller.update(ms(100)), 0.0, "round {round} step {step}");
            }
            // Short again (twice, so the last delay is short too): the allowance refills.
            for _ in 0..2 {
                assert_eq!(controller.update(ms(2)), 0.0, "round {round}");
            }
            assert_eq!(controller.probability, 0.0);
            assert_eq!(
                controller.burst_allowance_s,
                QUEUE_DELAY_BURST_ALLOWANCE.as_secs_f64(),
                "round {round}"
            );
        }
        // The same queue standing past the allowance is shed, starting from nothing (not
        // from a probability built up unapplied) and past a third within 300 ms.
        let mut spent = 0;
        while controller.burst_allowance_s > 0.0 {
            assert_eq!(controller.update(ms(100)), 0.0);
            spent += 1;
        }
        assert_eq!(spent, allowance_updates + 1);
        let first = controller.update(ms(100));
        assert!(first > 0.0 && first < 0.1, "{first}");
        let mut shed = first;
        for _ in 0..20 {
            shed = controller.update(ms(100));
        }
        assert!(shed > 0.3, "{shed}");
    }

    #[test]
    fn a_queue_under_the_target_is_never_shed() {
        let mut controller = Controller::new(TARGET);
        for step in 0..1000 {
            // Between half the target and the target, with jitter.
            let delay = ms(11 + (step % 8));
            assert_eq!(controller.update(delay), 0.0, "step {step}");
        }
    }

    #[test]
    fn shedding_is_evenly_spaced_and_actions_are_spared_until_half_the_orders_are_shed() {
        let gate = QueueDelayGate::new(TARGET).unwrap();
        gate.publish(0.25, ms(30));
        let shed: Vec<bool> = (0..16).map(|_| gate.admit_order().is_err()).collect();
        assert_eq!(shed.iter().filter(|s| **s).count(), 4);
        for window in shed.chunks(4) {
            assert_eq!(window.iter().filter(|s| **s).count(), 1, "{shed:?}");
        }
        assert!((0..100).all(|_| gate.admit_action().is_ok()));
        gate.publish(0.75, ms(30));
        let actions_shed = (0..100).filter(|_| gate.admit_action().is_err()).count();
        assert_eq!(actions_shed, 50);
        let orders_shed = (0..100).filter(|_| gate.admit_order().is_err()).count();
        assert!((74..=76).contains(&orders_shed), "{orders_shed}");
        gate.publish(0.0, ms(1));
        assert!((0..100).all(|_| gate.admit_order().is_ok()));
    }

    #[test]
    fn retry_after_spreads_over_the_seconds_the_admitted_share_needs() {
        let gate = QueueDelayGate::new(TARGET).unwrap();
        gate.publish(0.75, ms(30));
        let mut seconds = std::collections::BTreeSet::new();
        for _ in 0..400 {
            if let Err(RetryAfter(after)) = gate.admit_order() {
                seconds.insert(after);
            }
        }
        // p = 0.75 admits a quarter: retries spread over 1..=4 s.
        assert_eq!(seconds.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        gate.publish(QUEUE_DELAY_SHED_MAX, ms(300));
        let mut longest = 0;
        for _ in 0..400 {
            if let Err(RetryAfter(after)) = gate.admit_order() {
                longest = longest.max(after);
            }
        }
        assert!(longest <= QUEUE_DELAY_RETRY_AFTER_MAX_S);
        assert!(QueueDelayGate::new(Duration::ZERO).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_probe_sees_a_busy_runtime_and_sheds_then_recovers() {
        let gate = std::sync::Arc::new(QueueDelayGate::new(ms(2)).unwrap());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let probe = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.run_probe(|| Duration::ZERO, stopping).await })
        };
        // Tasks that each hold a worker for 1 ms and reschedule themselves: a ready queue
        // of ~64 ms per worker.
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut spinners = Vec::new();
        for _ in 0..128 {
            let busy = busy.clone();
            spinners.push(tokio::spawn(async move {
                while busy.load(Ordering::Relaxed) {
                    let until = Instant::now() + ms(1);
                    while Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.probability() == 0.0 {
            assert!(
                Instant::now() < deadline,
                "no shedding under a busy runtime"
            );
            tokio::time::sleep(ms(20)).await;
        }
        assert!(gate.delay() > ms(2), "{:?}", gate.delay());
        busy.store(false, Ordering::Relaxed);
        for spinner in spinners {
            spinner.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.probability() > 0.0 {
            assert!(Instant::now() < deadline, "still shedding once idle");
            tokio::time::sleep(ms(20)).await;
        }
        stop.send_replace(true);
        probe.await.unwrap();
    }
}
