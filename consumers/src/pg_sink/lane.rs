//! One lane of a batch: the records written through one connection, in
//! one transaction with their partitions' positions, retried until it
//! commits, is fenced, or the process stops.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus::IntCounter;
use secrecy::SecretString;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};

use crate::pg;

use callstream_kafka::wire::UniqueEvent;

use super::PgWriter;

/// The part of a batch written through one connection.
#[derive(Default)]
pub(super) struct Lane {
    pub(super) events: Vec<UniqueEvent>,
    /// Records skipped as undecodable, which the positions move past.
    pub(super) undecodable: u64,
    /// partition → (stored position before, first offset, next offset after)
    pub(super) ranges: BTreeMap<i32, (Option<i64>, i64, i64)>,
}

pub(super) enum LaneOutcome<A> {
    Committed {
        /// What each `write` returned: one for the lane, or one per record
        /// written one at a time.
        applied: Vec<A>,
        /// Records PostgreSQL refused, set aside in `rejected_events`.
        rejected: Vec<(UniqueEvent, Refusal)>,
    },
    /// Another instance moved one of the lane's positions first: rolled back.
    Fenced,
}

/// Why PostgreSQL refused a record.
#[derive(Debug, Clone)]
pub(super) struct Refusal {
    pub(super) code: String,
    pub(super) message: String,
}

/// Whether an error is PostgreSQL refusing what a record holds (it would
/// fail every retry), rather than the database or the connection failing.
fn refused_content(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|code| {
        let class = &code.code()[..2];
        matches!(class, "22" | "23" | "54")
    })
}

/// How a failed PostgreSQL operation is retried: counted, logged, after a
/// growing pause, on a new connection when the old one closed, until it
/// succeeds or shutdown begins.
pub(super) struct Retry<'a> {
    pub(super) url: &'a SecretString,
    pub(super) errors: &'a IntCounter,
    pub(super) shutdown: &'a watch::Receiver<bool>,
}

impl Retry<'_> {
    pub(super) fn backoff(&self) -> impl Iterator<Item = Duration> {
        pg::backoff(Duration::from_secs(30))
    }

    /// After `error`: waits its turn and reconnects if the connection
    /// closed. False when shutdown began meanwhile: the caller gives up
    /// (the batch rolled back and is read again at the next start).
    pub(super) async fn recover(
        &self,
        client: &mut Client,
        error: &tokio_postgres::Error,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> bool {
        self.errors.inc();
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        tracing::warn!(error = %error, sqlstate = error.code().map(SqlState::code), retry_in = ?delay, "PostgreSQL failed; rolled back, will retry");
        let mut shutdown = self.shutdown.clone();
        let wait = async {
            tokio::time::sleep(delay).await;
            if client.is_closed() {
                match pg::connect(self.url).await {
                    Ok(new) => *client = new,
                    // The next attempt fails on the closed connection and
                    // comes back here with a longer pause.
                    Err(e) => tracing::warn!(error = %e, "cannot reconnect to PostgreSQL"),
                }
            }
        };
        tokio::select! {
            _ = wait => !*self.shutdown.borrow(),
            _ = callstream_runtime::shutdown::wait_for(&mut shutdown) => false,
        }
    }
}

/// A lane committed with retries (see [`Retry`]); `None` when stopping.
pub(super) async fn commit_lane_retrying<W: PgWriter>(
    retry: &Retry<'_>,
    client: &mut Client,
    writer: &W,
    group: &str,
    topic: &str,
    lane: &Lane,
) -> Option<LaneOutcome<W::Applied>> {
    let mut backoff = retry.backoff();
    let mut one_by_one = false;
    // What the transaction whose COMMIT went unanswered wrote: it may have
    // committed, and then it, not a retry (which finds its own rows), is
    // what happened.
    let mut unanswered: Option<Written<W::Applied>> = None;
    loop {
        if let Some(written) = unanswered.take() {
            match landed(client, group, topic, lane).await {
                Ok(true) => {
                    tracing::info!(group, "the commit whose answer was lost had landed");
                    let (applied, rejected) = written;
                    return Some(LaneOutcome::Committed { applied, rejected });
                }
                // Not committed: written again below (or fenced, if
                // another instance moved a position meanwhile).
                Ok(false) => {}
                Err(e) => {
                    unanswered = Some(written);
                    if !retry.recover(client, &e, &mut backoff).await {
                        return None;
                    }
                    continue;
                }
            }
        }
        match commit_lane(client, writer, group, topic, lane, one_by_one).await {
            Ok(outcome) => return Some(outcome),
            Err(LaneError { error, .. }) if !one_by_one && refused_content(&error) => {
                tracing::warn!(group, error = %error, "PostgreSQL refused a record of the batch; writing it one record at a time");
                one_by_one = true;
            }
            Err(LaneError {
                error,
                unanswered: written,
            }) => {
                unanswered = written;
                if !retry.recover(client, &error, &mut backoff).await {
                    return None;
                }
            }
        }
    }
}

/// Whether every partition of `lane` is stored at the position after it:
/// the lane's transaction committed.
async fn landed(
    client: &Client,
    group: &str,
    topic: &str,
    lane: &Lane,
) -> Result<bool, tokio_postgres::Error> {
    for (partition, (_, _, to)) in &lane.ranges {
        if pg::load_offset(client, group, topic, *partition).await? != Some(*to) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A lane's transaction failed.
struct LaneError<A> {
    error: tokio_postgres::Error,
    /// What it wrote, when it failed at `COMMIT` itself: its answer may
    /// have been lost after the commit landed.
    unanswered: Option<Written<A>>,
}

impl<A> From<tokio_postgres::Error> for LaneError<A> {
    fn from(error: tokio_postgres::Error) -> Self {
        LaneError {
            error,
            unanswered: None,
        }
    }
}

/// Writes a lane and moves its partitions' positions in one transaction:
/// the whole lane in one `write`, or (`one_by_one`, for a lane PostgreSQL
/// refused) each record in a savepoint of its own, the records refused for
/// their content set aside in `rejected_events`.
async fn commit_lane<W: PgWriter>(
    client: &mut Client,
    writer: &W,
    group: &str,
    topic: &str,
    lane: &Lane,
    one_by_one: bool,
) -> Result<LaneOutcome<W::Applied>, LaneError<W::Applied>> {
    let mut tx = client.transaction().await?;
    let (applied, rejected) = if one_by_one {
        write_one_by_one(&mut tx, writer, group, topic, lane).await?
    } else {
        (vec![writer.write(&tx, &lane.events).await?], Vec::new())
    };
    let moves: Vec<pg::OffsetMove> = lane
        .ranges
        .iter()
        .map(|(partition, (from, _, to))| pg::OffsetMove {
            partition: *partition,
            from: *from,
            to: *to,
        })
        .collect();
    if !pg::advance_offsets(&tx, group, topic, &moves).await? {
        tx.rollback().await?;
        return Ok(LaneOutcome::Fenced);
    }
    match tx.commit().await {
        Ok(()) => Ok(LaneOutcome::Committed { applied, rejected }),
        Err(error) => Err(LaneError {
            error,
            unanswered: Some((applied, rejected)),
        }),
    }
}

pub(super) type Written<A> = (Vec<A>, Vec<(UniqueEvent, Refusal)>);

async fn write_one_by_one<W: PgWriter>(
    tx: &mut Transaction<'_>,
    writer: &W,
    group: &str,
    topic: &str,
    lane: &Lane,
) -> Result<Written<W::Applied>, tokio_postgres::Error> {
    let mut applied = Vec::with_capacity(lane.events.len());
    let mut rejected = Vec::new();
    for event in &lane.events {
        let savepoint = tx.savepoint("one_record").await?;
        match writer.write(&savepoint, std::slice::from_ref(event)).await {
            Ok(a) => {
                savepoint.commit().await?;
                applied.push(a);
            }
            Err(e) if refused_content(&e) => {
                savepoint.rollback().await?;
                let refusal = match e.as_db_error() {
                    Some(db) => Refusal {
                        code: db.code().code().to_string(),
                        message: match db.detail() {
                            Some(detail) => format!("{}: {detail}", db.message()),
                            None => db.message().to_string(),
                        },
                    },
                    None => Refusal {
                        code: String::new(),
                        message: e.to_string(),
                    },
                };
                tx.execute(
                    "INSERT INTO rejected_events (consumer_group, topic, partition,
                         record_offset, event_id, revision, sqlstate, error, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT DO NOTHING",
                    &[
                        &group,
                        &topic,
                        &event.partition,
                        &event.offset,
                        &event.event.event_id,
                        &event.revision,
                        &refusal.code,
                        &refusal.message,
                        &event.json,
                    ],
                )
                .await?;
                rejected.push((event.clone(), refusal));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((applied, rejected))
}
