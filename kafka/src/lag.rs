//! Consumer lag, measured from the brokers on a task of its own.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::Offset;

/// Where a consumer's lag counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LagFrom {
    /// The next record the loop will receive: for loops that finish one
    /// record before taking the next.
    Position,
    /// The committed offsets: for loops that work on several records at
    /// once, where the position runs ahead of what is finished.
    Committed,
}

/// Records between `consumer`'s positions (or committed offsets, see
/// [`LagFrom`]) and the ends of its assigned partitions, asked of the
/// brokers (one `ListOffsets` request per leader for all partitions; with
/// `read_committed`, the last stable offsets). Blocking: call off the async
/// workers. A partition without a position counts from its committed
/// offset, and without that from its first offset. `None` if the brokers
/// did not answer within `timeout`.
///
/// (It used the high watermarks librdkafka caches from its fetch responses
/// before: no request, but stale while librdkafka's prefetch queue is full
/// and it does not fetch, which is exactly when a stuck consumer's lag
/// should rise; and a partition not consumed from counted as 0.)
pub(crate) fn consumer_lag<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    from: LagFrom,
    timeout: Duration,
) -> Option<i64> {
    let positions = match from {
        LagFrom::Position => consumer.position().ok()?,
        LagFrom::Committed => consumer.committed(timeout).ok()?,
    };
    if positions.count() == 0 {
        return Some(0);
    }
    // `offsets_for_times` with the "timestamp" -1 (`Offset::End`) asks
    // for each partition's end.
    let mut ends = positions.clone();
    ends.set_all_offsets(Offset::End).ok()?;
    let ends = consumer.offsets_for_times(ends, timeout).ok()?;
    let unread = |e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
        !matches!(e.offset(), Offset::Offset(_))
    };
    let committed = if from == LagFrom::Position && positions.elements().iter().any(unread) {
        Some(consumer.committed(timeout).ok()?)
    } else {
        None
    };
    let mut lag = 0;
    for e in positions.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let Some(Offset::Offset(end)) = ends.find_partition(topic, partition).map(|e| e.offset())
        else {
            continue;
        };
        let from = match e.offset() {
            Offset::Offset(at) => at,
            _ => match committed
                .as_ref()
                .and_then(|c| c.find_partition(topic, partition))
                .map(|c| c.offset())
            {
                Some(Offset::Offset(at)) => at,
                _ => match consumer.fetch_watermarks(topic, partition, timeout) {
                    Ok((low, _)) => low,
                    Err(_) => continue,
                },
            },
        };
        lag += (end - from).max(0);
    }
    Some(lag)
}

/// How often [`LagReporter`] measures.
pub(crate) const LAG_EVERY: Duration = Duration::from_secs(2);
/// How long [`LagReporter`] waits for the brokers' answers.
const LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// Measures a consumer's lag into `gauge` every [`LAG_EVERY`], on a task of
/// its own, so the gauge also moves while the consumer is idle or stuck (it
/// used to be measured only after a batch). Stops when dropped. When the
/// brokers do not answer, the gauge keeps its last value.
pub(crate) struct LagReporter {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl LagReporter {
    pub fn spawn<X, C>(consumer: Arc<C>, gauge: prometheus::IntGauge) -> LagReporter
    where
        X: ConsumerContext,
        C: Consumer<X> + Send + Sync + 'static,
    {
        Self::spawn_from(consumer, gauge, LagFrom::Position)
    }

    pub fn spawn_from<X, C>(
        consumer: Arc<C>,
        gauge: prometheus::IntGauge,
        from: LagFrom,
    ) -> LagReporter
    where
        X: ConsumerContext,
        C: Consumer<X> + Send + Sync + 'static,
    {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let measured = consumer.clone();
                let lag = tokio::task::spawn_blocking(move || {
                    consumer_lag(measured.as_ref(), from, LAG_TIMEOUT)
                })
                .await;
                if let Ok(Some(lag)) = lag {
                    gauge.set(lag);
                }
                tokio::select! {
                    _ = tokio::time::sleep(LAG_EVERY) => {}
                    _ = stopped.notified() => return,
                }
            }
        });
        LagReporter { stop, task }
    }

    /// Stops it after the measurement in flight (a request to the brokers,
    /// at most [`LAG_TIMEOUT`]) and waits until its task, and so its
    /// references to the consumer, are gone.
    pub async fn stop(mut self) {
        self.stop.notify_one();
        let _ = (&mut self.task).await;
    }
}

impl Drop for LagReporter {
    /// Without [`LagReporter::stop`] (an error path): a measurement in
    /// flight keeps its reference to the consumer until it ends.
    fn drop(&mut self) {
        self.task.abort();
    }
}
