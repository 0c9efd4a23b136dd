//! Waits between attempts on a failing dependency (Kafka, PostgreSQL, an
//! HTTP target): exponential, jittered so a fleet does not retry in step,
//! and without end; the caller stops on shutdown.

use std::time::Duration;

use backon::BackoffBuilder;

/// From `min` doubling to `max`, with jitter, for ever.
pub fn exponential(min: Duration, max: Duration) -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_its_ceiling_and_never_ends() {
        let max = Duration::from_secs(5);
        let delays: Vec<_> = exponential(Duration::from_millis(100), max)
            .take(50)
            .collect();
        assert_eq!(delays.len(), 50, "no end");
        assert!(delays[0] >= Duration::from_millis(100));
        // Jitter adds up to one more delay on top.
        assert!(delays.iter().all(|d| *d <= 2 * max), "{delays:?}");
        assert!(delays[49] >= max, "{delays:?}");
    }
}
