//! Latency recording: one [`Recorder`] per connection task, merged when the run ends, and one
//! shared [`Timeline`] of per-second buckets that tasks flush into as each second passes.
//!
//! Tasks record into a few shared recorders ([`RecorderShards`], a short lock per request,
//! never held across an await) rather than one recorder each: a recorder's histograms cover
//! every latency from the start (see [`full_range_histogram`]), which is affordable for a
//! handful of recorders, not for one per connection. A recorder touches the shared timeline
//! once per second (to hand over the second it just finished). Histograms
//! are HdrHistograms of microseconds: 3 significant figures for the run's results (p99.9 on a
//! 40 µs loopback request is exact to the microsecond), 2 for each second of the timeline.
//!
//! Invariant: a sample is counted once in the timeline (whole run, warm-up included) and, when
//! it falls in the measured window, once in the recorder's class histogram and counts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::outcome::{CLASS_COUNT, OutcomeClass};

/// Significant figures of the run's latency histograms.
pub const LATENCY_SIGFIG: u8 = 3;
/// Significant figures of each second's histogram in the timeline (1% is plenty for a chart).
pub const TIMELINE_SIGFIG: u8 = 2;
/// Seconds the timeline keeps (two days: longer than any accepted run plus its grace);
/// samples past it fold into the last second rather than growing without bound.
pub const TIMELINE_SECONDS_MAX: usize = 2 * 24 * 3600;

pub fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // Auto-resizing: memory grows with the largest latency actually seen, not the largest
    // possible one. Used where histograms are many and short-lived (a second of the
    // timeline, a merge); the run's recorders use [`full_range_histogram`].
    Histogram::new(sigfig).expect("sigfig 2 or 3 is valid")
}

/// A histogram that covers every recordable latency from the start, so recording never
/// grows it. A growing histogram reallocates and zeroes its counts each time a larger
/// latency arrives; with a recorder per connection that was most of the generator's CPU at
/// the end of the warm-up (hundreds of histograms growing at once, each page cleared by the
/// kernel) and stalled its schedule by up to a second. About 190 KiB at 3 figures.
pub fn full_range_histogram(sigfig: u8) -> Histogram<u64> {
    let mut histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig)
        .expect("1..=an hour at 2 or 3 figures is valid");
    histogram.auto(true);
    histogram
}

/// Largest latency recorded (an hour); anything longer is recorded as an hour.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Records `micros` into an auto-resizing histogram. (`saturating_record` would clamp to the
/// histogram's current top instead of growing it.)
pub fn record_micros(histogram: &mut Histogram<u64>, micros: u64) {
    histogram
        .record(micros.min(LATENCY_US_MAX))
        .expect("an auto-resizing histogram grows to an hour of microseconds");
}

fn add_into(target: &mut Option<Histogram<u64>>, source: &Option<Histogram<u64>>, sigfig: u8) {
    if let Some(source) = source {
        target
            .get_or_insert_with(|| new_histogram(sigfig))
            .add(source)
            .expect("auto-resizing histograms accept any value");
    }
}

/// One finished request, as the task saw it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub class: OutcomeClass,
    /// What the buyer waited: from the intended send time (open model) or the actual send
    /// (closed model) to the complete answer.
    pub latency: Duration,
    /// Open model only: from the actual send, i.e. what a tool that ignores the schedule
    /// would report. Recorded for answered requests only, like the corrected latency row, so
    /// that the two rows describe the same requests.
    pub service: Option<Duration>,
    /// Open model only: how late the generator sent it (actual send - intended).
    pub send_lag: Option<Duration>,
    /// Open model only: the part of `send_lag` after a connection was free for it (the
    /// generator's own lateness; the rest was a wait for a connection).
    pub own_lag: Option<Duration>,
    /// Open model only: the latency with the generator's own lag left out (from the intended
    /// time when every connection was busy then, else from the send). This is what a tool
    /// that stamps a request's start when its rate limiter wakes reports as corrected (oha
    /// `-q --latency-correction` does): comparable with it, not with the buyer's wait.
    pub without_own_lag: Option<Duration>,
    /// Completion time since the start of the run: the timeline's second.
    pub completed_at: Duration,
    /// Inside the measured window (the warm-up is not).
    pub measured: bool,
    /// The error code of the body (`sold_out`, ...) or the transport failure (`timeout`, ...).
    pub detail: Option<&'a str>,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// One second of the run, all classes.
#[derive(Debug, Clone)]
pub struct SecondBucket {
    pub counts: [u64; CLASS_COUNT],
    /// Latency of the answered requests that completed in this second.
    pub latency: Histogram<u64>,
}

impl SecondBucket {
    fn new() -> Self {
        Self {
            counts: [0; CLASS_COUNT],
            latency: new_histogram(TIMELINE_SIGFIG),
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, other: &SecondBucket) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.latency
            .add(&other.latency)
            .expect("auto-resizing histograms accept any value");
    }
}

/// Per-second buckets for the whole run (index = second since the start).
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Vec<SecondBucket>,
}

impl Timeline {
    pub fn seconds(&self) -> &[SecondBucket] {
        &self.seconds
    }

    fn bucket_mut(&mut self, second: usize) -> &mut SecondBucket {
        let second = second.min(TIMELINE_SECONDS_MAX - 1);
        while self.seconds.len() <= second {
            self.seconds.push(SecondBucket::new());
        }
        &mut self.seconds[second]
    }

    pub fn add_second(&mut self, second: usize, bucket: &SecondBucket) {
        self.bucket_mut(second).add(bucket);
    }

    pub fn merge(&mut self, other: &Timeline) {
        for (second, bucket) in other.seconds.iter().enumerate() {
            self.add_second(second, bucket);
        }
    }
}

/// The second a task is filling before it hands it to the shared timeline.
#[derive(Debug)]
struct Interval {
    second: usize,
    bucket: SecondBucket,
    dirty: bool,
}

/// A share of the run's results (one of [`RecorderShards`]), or the merge of them all.
#[derive(Debug)]
pub struct Recorder {
    latency: [Option<Histogram<u64>>; CLASS_COUNT],
    service: Option<Histogram<u64>>,
    send_lag: Option<Histogram<u64>>,
    own_lag: Option<Histogram<u64>>,
    without_own_lag: Option<Histogram<u64>>,
    counts: [u64; CLASS_COUNT],
    warmup_counts: [u64; CLASS_COUNT],
    details: BTreeMap<String, u64>,
    interval: Interval,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            latency: Default::default(),
            service: None,
            send_lag: None,
            own_lag: None,
            without_own_lag: None,
            counts: [0; CLASS_COUNT],
            warmup_counts: [0; CLASS_COUNT],
            details: BTreeMap::new(),
            interval: Interval {
                second: 0,
                bucket: SecondBucket {
                    counts: [0; CLASS_COUNT],
                    latency: full_range_histogram(TIMELINE_SIGFIG),
                },
                dirty: false,
            },
        }
    }

    /// Records one request; hands the previous second to `timeline` when a new one starts.
    pub fn record(&mut self, sample: &Sample<'_>, timeline: &Mutex<Timeline>) {
        let index = sample.class.index();
        let latency_us = micros(sample.latency);
        if sample.measured {
            self.counts[index] += 1;
            record_micros(
                self.latency[index].get_or_insert_with(|| full_range_histogram(LATENCY_SIGFIG)),
                latency_us,
            );
            if let Some(service) = sample.service.filter(|_| sample.class.is_answered()) {
                record_micros(
                    self.service
                        .get_or_insert_with(|| full_range_histogram(LATENCY_SIGFIG)),
                    micros(service),
                );
            }
            if let Some(lag) = sample.send_lag {
                record_micros(
                    self.send_lag
                        .get_or_insert_with(|| full_range_histogram(LATENCY_SIGFIG)),
                    micros(lag),
                );
            }
            if let Some(latency) = sample
                .without_own_lag
                .filter(|_| sample.class.is_answered())
            {
                record_micros(
                    self.without_own_lag
                        .get_or_insert_with(|| full_range_histogram(LATENCY_SIGFIG)),
                    micros(latency),
                );
            }
            if let Some(lag) = sample.own_lag {
                record_micros(
                    self.own_lag
                        .get_or_insert_with(|| full_range_histogram(LATENCY_SIGFIG)),
                    micros(lag),
                );
            }
            if let Some(detail) = sample.detail {
                match self.details.get_mut(detail) {
                    Some(count) => *count += 1,
                    None => {
                        self.details.insert(detail.to_owned(), 1);
                    }
                }
            }
        } else {
            self.warmup_counts[index] += 1;
        }
        let second = usize::try_from(sample.completed_at.as_secs()).unwrap_or(usize::MAX);
        if self.interval.dirty && second != self.interval.second {
            self.flush(timeline);
        }
        self.interval.second = second;
        self.interval.dirty = true;
        self.interval.bucket.counts[index] += 1;
        if sample.class.is_answered() {
            record_micros(&mut self.interval.bucket.latency, latency_us);
        }
    }

    /// Hands the second in progress to `timeline` (call once more when the task ends).
    pub fn flush(&mut self, timeline: &Mutex<Timeline>) {
        if !self.interval.dirty {
            return;
        }
        {
            let mut timeline = timeline.lock().unwrap_or_else(|poison| poison.into_inner());
            timeline.add_second(self.interval.second, &self.interval.bucket);
        }
        self.interval.bucket.counts = [0; CLASS_COUNT];
        self.interval.bucket.latency.reset();
        self.interval.dirty = false;
    }

    /// Adds `other`'s results to these (the end-of-run merge across tasks).
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            add_into(mine, theirs, LATENCY_SIGFIG);
        }
        add_into(&mut self.service, &other.service, LATENCY_SIGFIG);
        add_into(&mut self.send_lag, &other.send_lag, LATENCY_SIGFIG);
        add_into(&mut self.own_lag, &other.own_lag, LATENCY_SIGFIG);
        add_into(
            &mut self.without_own_lag,
            &other.without_own_lag,
            LATENCY_SIGFIG,
        );
        for index in 0..CLASS_COUNT {
            self.counts[index] += other.counts[index];
            self.warmup_counts[index] += other.warmup_counts[index];
        }
        for (detail, count) in &other.details {
            *self.details.entry(detail.clone()).or_default() += count;
        }
    }

    pub fn count(&self, class: OutcomeClass) -> u64 {
        self.counts[class.index()]
    }

    /// Requests in the measured window, every class.
    pub fn measured_total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn warmup_total(&self) -> u64 {
        self.warmup_counts.iter().sum()
    }

    pub fn class_histogram(&self, class: OutcomeClass) -> Option<&Histogram<u64>> {
        self.latency[class.index()].as_ref()
    }

    /// Every answered request (all classes but transport errors) in one histogram.
    pub fn answered_histogram(&self) -> Histogram<u64> {
        let mut all = new_histogram(LATENCY_SIGFIG);
        for class in OutcomeClass::ALL.into_iter().filter(|c| c.is_answered()) {
            if let Some(histogram) = self.class_histogram(class) {
                all.add(histogram)
                    .expect("auto-resizing histograms accept any value");
            }
        }
        all
    }

    pub fn service_histogram(&self) -> Option<&Histogram<u64>> {
        self.service.as_ref()
    }

    pub fn send_lag_histogram(&self) -> Option<&Histogram<u64>> {
        self.send_lag.as_ref()
    }

    pub fn without_own_lag_histogram(&self) -> Option<&Histogram<u64>> {
        self.without_own_lag.as_ref()
    }

    pub fn own_lag_histogram(&self) -> Option<&Histogram<u64>> {
        self.own_lag.as_ref()
    }

    pub fn details(&self) -> &BTreeMap<String, u64> {
        &self.details
    }
}

/// Recorders shared by the connection tasks: task `i` records into shard `i % len`, so tasks
/// on different runtime threads rarely wait for the same lock. More shards than runtime
/// threads keeps that wait short; few enough that their full-range histograms stay a few MiB.
#[derive(Debug)]
pub struct RecorderShards {
    shards: Vec<Mutex<Recorder>>,
}

impl RecorderShards {
    pub fn new(count: usize) -> Self {
        Self {
            shards: (0..count.max(1))
                .map(|_| Mutex::new(Recorder::new()))
                .collect(),
        }
    }

    /// Records `sample` for task `task` (see [`Recorder::record`]).
    pub fn record(&self, task: usize, sample: &Sample<'_>, timeline: &Mutex<Timeline>) {
        let shard = &self.shards[task % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .record(sample, timeline);
    }

    /// Flushes every shard's second in progress into `timeline` and merges them (the end of
    /// the run).
    pub fn finish(self, timeline: &Mutex<Timeline>) -> Recorder {
        let mut merged = Recorder::new();
        for shard in self.shards {
            let mut shard = shard
                .into_inner()
                .unwrap_or_else(|poison| poison.into_inner());
            shard.flush(timeline);
            merged.merge(&shard);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(class: OutcomeClass, latency_us: u64, at_ms: u64, measured: bool) -> Sample<'static> {
        Sample {
            class,
            latency: Duration::from_micros(latency_us),
            service: None,
            send_lag: None,
            own_lag: None,
            without_own_lag: None,
            completed_at: Duration::from_millis(at_ms),
            measured,
            detail: (class == OutcomeClass::Refused).then_some("sold_out"),
        }
    }

    #[test]
    fn merging_task_recorders_equals_recording_everything_in_one() {
        let timeline = Mutex::new(Timeline::default());
        let reference_timeline = Mutex::new(Timeline::default());
        let mut reference = Recorder::new();
        let mut tasks: Vec<Recorder> = (0..4).map(|_| Recorder::new()).collect();
        for i in 0..20_000u64 {
            let class = match i % 10 {
                0 => OutcomeClass::Refused,
                1 => OutcomeClass::TransportError,
                _ => OutcomeClass::Created,
            };
            let s = sample(class, 50 + (i * 7919) % 5000, i / 5, i >= 1000);
            tasks[(i % 4) as usize].record(&s, &timeline);
            reference.record(&s, &reference_timeline);
        }
        let mut merged = Recorder::new();
        for task in &mut tasks {
            task.flush(&timeline);
            merged.merge(task);
        }
        reference.flush(&reference_timeline);

        for class in OutcomeClass::ALL {
            assert_eq!(merged.count(class), reference.count(class), "{class:?}");
        }
        assert_eq!(merged.measured_total(), 19_000);
        assert_eq!(merged.warmup_total(), 1_000);
        let created = merged.class_histogram(OutcomeClass::Created).unwrap();
        let expected = reference.class_histogram(OutcomeClass::Created).unwrap();
        assert_eq!(created.len(), expected.len());
        for quantile in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                created.value_at_quantile(quantile),
                expected.value_at_quantile(quantile)
            );
        }
        assert_eq!(merged.details().get("sold_out"), Some(&1_900));
        assert_eq!(
            merged.answered_histogram().len(),
            merged.measured_total() - merged.count(OutcomeClass::TransportError)
        );

        // The timeline holds every sample once, warm-up included, second by second.
        let timeline = timeline.into_inner().unwrap();
        let reference_timeline = reference_timeline.into_inner().unwrap();
        assert_eq!(timeline.seconds().len(), 4);
        for (mine, theirs) in timeline.seconds().iter().zip(reference_timeline.seconds()) {
            assert_eq!(mine.counts, theirs.counts);
            assert_eq!(mine.latency.len(), theirs.latency.len());
        }
        let total: u64 = timeline.seconds().iter().map(SecondBucket::total).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn a_task_that_skips_seconds_hands_each_one_over_once() {
        let timeline = Mutex::new(Timeline::default());
        let mut recorder = Recorder::new();
        recorder.record(&sample(OutcomeClass::Created, 100, 100, true), &timeline);
        recorder.record(&sample(OutcomeClass::Created, 100, 5_100, true), &timeline);
        recorder.flush(&timeline);
        recorder.flush(&timeline);
        let timeline = timeline.into_inner().unwrap();
        let totals: Vec<u64> = timeline.seconds().iter().map(SecondBucket::total).collect();
        assert_eq!(totals, vec![1, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn recording_never_grows_a_recorders_histograms() {
        // Growing is what stalled the open schedule: a recorder's histograms are allocated
        // for the whole range when first used and keep their size whatever is recorded.
        let timeline = Mutex::new(Timeline::default());
        let shards = RecorderShards::new(2);
        let mut s = sample(OutcomeClass::Created, 40, 0, true);
        s.service = Some(Duration::from_micros(30));
        s.send_lag = Some(Duration::from_micros(10));
        shards.record(0, &s, &timeline);
        let sizes = |shards: &RecorderShards| {
            let recorder = shards.shards[0].lock().unwrap();
            [
                recorder.latency[OutcomeClass::Created.index()]
                    .as_ref()
                    .unwrap()
                    .distinct_values(),
                recorder.service.as_ref().unwrap().distinct_values(),
                recorder.send_lag.as_ref().unwrap().distinct_values(),
                recorder.interval.bucket.latency.distinct_values(),
            ]
        };
        let before = sizes(&shards);
        let mut slow = sample(OutcomeClass::Created, LATENCY_US_MAX, 10, true);
        slow.service = Some(Duration::from_secs(3600));
        slow.send_lag = Some(Duration::from_secs(7200));
        shards.record(0, &slow, &timeline);
        assert_eq!(sizes(&shards), before);
        let merged = shards.finish(&timeline);
        assert_eq!(merged.count(OutcomeClass::Created), 2);
        assert!(
            merged
                .send_lag_histogram()
                .unwrap()
                .equivalent(merged.send_lag_histogram().unwrap().max(), LATENCY_US_MAX)
        );
    }

    #[test]
    fn large_latencies_grow_the_histogram_instead_of_being_clamped() {
        let mut histogram = new_histogram(LATENCY_SIGFIG);
        record_micros(&mut histogram, 3);
        record_micros(&mut histogram, 2_500_000);
        record_micros(&mut histogram, u64::MAX);
        assert!(histogram.equivalent(histogram.value_at_quantile(0.5), 2_500_000));
        assert!(histogram.equivalent(histogram.max(), LATENCY_US_MAX));
    }

    #[test]
    fn open_model_samples_keep_service_time_and_send_lag_apart() {
        let timeline = Mutex::new(Timeline::default());
        let mut recorder = Recorder::new();
        let mut s = sample(OutcomeClass::Created, 10_000, 0, true);
        s.service = Some(Duration::from_micros(100));
        s.send_lag = Some(Duration::from_micros(9_900));
        s.own_lag = Some(Duration::from_micros(9_000));
        s.without_own_lag = Some(Duration::from_micros(1_000));
        recorder.record(&s, &timeline);
        // A transport error has no answer: not in the row comparable with other tools.
        let mut lost = sample(OutcomeClass::TransportError, 10_000, 0, true);
        lost.without_own_lag = Some(Duration::from_micros(1_000));
        recorder.record(&lost, &timeline);
        let without = recorder.without_own_lag_histogram().unwrap();
        assert_eq!(without.len(), 1);
        assert!(without.equivalent(without.max(), 1_000));
        assert!(
            recorder
                .own_lag_histogram()
                .unwrap()
                .equivalent(recorder.own_lag_histogram().unwrap().max(), 9_000)
        );
        let latency = recorder.class_histogram(OutcomeClass::Created).unwrap();
        assert!(
            latency.equivalent(latency.max(), 10_000),
            "max {}",
            latency.max()
        );
        assert!(
            recorder
                .service_histogram()
                .unwrap()
                .equivalent(recorder.service_histogram().unwrap().max(), 100)
        );
        assert_eq!(recorder.send_lag_histogram().unwrap().len(), 1);
    }

    #[test]
    fn service_time_counts_the_same_requests_as_the_corrected_row() {
        let timeline = Mutex::new(Timeline::default());
        let mut recorder = Recorder::new();
        for class in [OutcomeClass::Created, OutcomeClass::TransportError] {
            let mut s = sample(class, 10_000, 0, true);
            s.service = Some(Duration::from_micros(100));
            recorder.record(&s, &timeline);
        }
        assert_eq!(recorder.answered_histogram().len(), 1);
        assert_eq!(recorder.service_histogram().unwrap().len(), 1);
    }
}
