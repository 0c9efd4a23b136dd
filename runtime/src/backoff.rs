//! Waits between attempts on a failing dependency (Kafka, PostgreSQL):
//! exponential, jittered so a fleet does not retry in step, and without
//! end; the caller stops on shutdown. (backon's, with a reset.)

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The waits between `attempts` tries of one request (so `attempts - 1`
/// retries): from `min` doubling to `max`, with jitter. For the consumers
/// that call out over HTTP (CRM targets, recording downloads).
pub fn retries(min: Duration, max: Duration, attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1) as usize)
}

/// From `min` doubling to `max`, with jitter, for ever; [`Backoff::reset`]
/// starts over after a success.
pub struct Backoff {
    builder: ExponentialBuilder,
    current: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn exponential(min: Duration, max: Duration) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times();
        Backoff {
            current: builder.build(),
            builder,
            max,
        }
    }

    /// The next wait.
    pub fn delay(&mut self) -> Duration {
        self.current.next().unwrap_or(self.max)
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.current = self.builder.build();
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_ceiling_never_ends_and_starts_over() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::exponential(min, max);
        let delays: Vec<_> = backoff.by_ref().take(50).collect();
        assert_eq!(delays.len(), 50, "no end");
        assert!(delays[0] >= min && delays[0] < 2 * min + min, "{delays:?}");
        // Jitter adds up to one more delay on top.
        assert!(delays.iter().all(|d| *d <= 2 * max), "{delays:?}");
        assert!(delays[49] >= max, "{delays:?}");
        backoff.reset();
        assert!(backoff.delay() < 3 * min, "short again after a reset");
    }
}
