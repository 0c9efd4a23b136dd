//! Calls in PostgreSQL: the `calls` table (migration `V8__calls.sql`), one
//! row per call, merged by `callstream-store` from the events it stores,
//! and published to `callstream.calls.v1` from there ([`worker`]).
//!
//! Which events make one call, and how they merge, is
//! [`callstream_schemas::call`]: the one place the merge rules live.
//!
//! The store's batch transaction only queues the calls whose events it
//! changed ([`queue`], table `calls_dirty`); the calls task ([`worker`])
//! then merges each queued call from its stored events ([`merge_queued`]),
//! writes `calls` and `calls_outbox` and takes the key out of the queue,
//! in one transaction, and publishes. So merging costs the store's lanes
//! one small upsert, and calls follow the events by a pass of the task.
//!
//! Guarantee: once the queue is empty, the `calls` row of every call the
//! store has an event of holds the merge of that call's stored events. A
//! key is queued in the transaction that commits its events, so a crash
//! or a replay loses no change and leaves one row per call (the key is the
//! primary key), never a half-merged one. A key whose version moved on
//! while it was merged (an event of the call committed meanwhile) stays
//! queued and is merged again. One task merges at a time (the calls task's
//! session lock), so two merges of one call never race. The row's
//! `revision` goes up by one exactly when the merged call changes.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use crate::pg::RawJsonb;

use callstream_schemas::call::Call;
use callstream_schemas::Event;

pub mod worker;

/// The first key of the two-key advisory locks that guard calls (`call`
/// in ASCII); the second is a bucket of the call key's `hashtext`. Two-key
/// locks do not share a space with the one-key migration lock.
const LOCK_CLASS: i32 = 0x6361_6c6c;
/// Buckets of call keys: a transaction takes at most this many locks
/// whatever its batch size (PostgreSQL's lock table holds
/// `max_locks_per_transaction` × connections, 6,400 by default).
const LOCK_BUCKETS: i32 = 1024;

/// Takes the advisory lock of each key's bucket, in one order, for the rest
/// of the transaction: analytics' `kpi_calls` rows are shared by all
/// partitions, so two instances briefly owning partitions of one call
/// (a rebalance) must not merge it from each other's uncommitted state.
/// Two keys sharing a bucket share a lock, which only serializes them.
pub(crate) async fn lock(tx: &Transaction<'_>, keys: &[&str]) -> Result<(), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT count(pg_advisory_xact_lock($1, b)) FROM
            (SELECT DISTINCT hashtext(k) & ($3 - 1) AS b FROM unnest($2::text[]) AS k ORDER BY 1) AS locks",
        &[&LOCK_CLASS, &keys, &LOCK_BUCKETS],
    )
    .await?;
    Ok(())
}

/// Queues `keys` for merging (`calls_dirty`), in the transaction that
/// wrote their events: the calls task merges them once it commits. Keys
/// are taken in one order, so two lanes queueing the same calls wait for
/// each other instead of deadlocking.
pub(crate) async fn queue(
    tx: &Transaction<'_>,
    keys: &BTreeSet<String>,
) -> Result<(), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    tx.execute(
        "INSERT INTO calls_dirty (call_key, version) SELECT k, 1 FROM unnest($1::text[]) AS k
         ON CONFLICT (call_key) DO UPDATE SET version = calls_dirty.version + 1",
        &[&keys],
    )
    .await?;
    Ok(())
}

/// What one [`merge_queued`] pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Merged {
    /// Queued calls merged.
    pub merged: u64,
    /// Of those, calls whose state changed (written, queued for publishing).
    pub changed: u64,
}

/// Merges up to `limit` queued calls after `after` (by key) again from
/// their events, writes those whose merge changed into `calls` (and
/// `calls_outbox`), and takes them out of the queue unless their version
/// moved on. Returns what it did and the last key it took.
pub(crate) async fn merge_queued(
    tx: &Transaction<'_>,
    after: &str,
    limit: i64,
) -> Result<(Merged, Option<String>), tokio_postgres::Error> {
    // Locked in key order, as the store's lanes queue keys: a lane queueing
    // one of these again waits for this merge to commit, then queues it
    // anew (its event, uncommitted now, is merged in the next pass).
    let queued = tx
        .query(
            "SELECT call_key, version FROM calls_dirty WHERE call_key > $1
             ORDER BY call_key LIMIT $2 FOR UPDATE",
            &[&after, &limit],
        )
        .await?;
    let Some(last) = queued.last() else {
        return Ok((Merged::default(), None));
    };
    let last: String = last.try_get(0)?;
    let mut keys: Vec<&str> = Vec::with_capacity(queued.len());
    let mut versions: Vec<i64> = Vec::with_capacity(queued.len());
    for row in &queued {
        keys.push(row.try_get(0)?);
        versions.push(row.try_get(1)?);
    }
    // One index look-up per key, whatever the planner estimates: on a new
    // table without statistics it took `call_key = ANY($1)` for most of
    // the table and scanned all of it, each batch (`OFFSET 0` keeps the
    // look-up from being flattened into a join it could plan that way).
    let rows = tx
        .query(
            "SELECT k.key, e.event::text FROM unnest($1::text[]) AS k(key)
             JOIN LATERAL (SELECT event FROM events
                           WHERE events.call_key = k.key OFFSET 0) AS e ON true",
            &[&keys],
        )
        .await?;
    let mut members: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for row in &rows {
        let key: &str = row.try_get(0)?;
        let json: &str = row.try_get(1)?;
        match serde_json::from_str::<Event>(json) {
            Ok(event) => members.entry(key).or_default().push(event),
            // Stored from a record that parsed as an event; only a hand
            // edit of the table gets here.
            Err(e) => {
                tracing::error!(call_key = %key, error = %e, "a stored event is not an event any more; merging its call without it")
            }
        }
    }
    let calls: Vec<Call> = members
        .values()
        .filter_map(|events| Call::from_events(events))
        .collect();
    let changed = write(tx, &calls).await?;
    tx.execute(
        "DELETE FROM calls_dirty d USING unnest($1::text[], $2::bigint[]) AS u(k, v)
         WHERE d.call_key = u.k AND d.version = u.v",
        &[&keys, &versions],
    )
    .await?;
    Ok((
        Merged {
            merged: keys.len() as u64,
            changed,
        },
        Some(last),
    ))
}

/// The upsert of merged calls: new calls at revision 1, a changed one at
/// the next revision, each then queued in the outbox; a merge equal to the
/// row changes nothing.
const WRITE_SQL: &str = "
WITH written AS (
INSERT INTO calls AS t (call_key, revision, provider, tenant, final, status, direction,
    started_at, answered_at, ended_at, duration_seconds, talk_seconds,
    user_id, user_name, user_email, user_number, external_number, external_name, notes,
    events, recordings, voicemail, legs, call)
SELECT k, 1, c->>'provider', c->>'tenant', (c->>'final')::boolean, c->>'status', c->>'direction',
    (c->>'started_at')::timestamptz, (c->>'answered_at')::timestamptz, (c->>'ended_at')::timestamptz,
    (c->>'duration_seconds')::float8, (c->>'talk_seconds')::float8,
    c->'internal'->>'id', c->'internal'->>'name', c->'internal'->>'email', c->'internal'->>'number',
    c->'external'->>'number', c->'external'->>'name', c->>'notes',
    c->'timeline', COALESCE(c->'recordings', '[]'), c->'voicemail', COALESCE(c->'legs', '[]'), c
FROM unnest($1::text[], $2::jsonb[]) AS u(k, c)
ON CONFLICT (call_key) DO UPDATE SET revision = t.revision + 1,
    provider = EXCLUDED.provider, tenant = EXCLUDED.tenant, final = EXCLUDED.final,
    status = EXCLUDED.status, direction = EXCLUDED.direction,
    started_at = EXCLUDED.started_at, answered_at = EXCLUDED.answered_at,
    ended_at = EXCLUDED.ended_at, duration_seconds = EXCLUDED.duration_seconds,
    talk_seconds = EXCLUDED.talk_seconds, user_id = EXCLUDED.user_id,
    user_name = EXCLUDED.user_name, user_email = EXCLUDED.user_email,
    user_number = EXCLUDED.user_number, external_number = EXCLUDED.external_number,
    external_name = EXCLUDED.external_name, notes = EXCLUDED.notes,
    events = EXCLUDED.events, recordings = EXCLUDED.recordings,
    voicemail = EXCLUDED.voicemail, legs = EXCLUDED.legs, call = EXCLUDED.call,
    updated_at = now()
WHERE t.call <> EXCLUDED.call
RETURNING call_key, revision)
INSERT INTO calls_outbox (call_key, revision) SELECT call_key, revision FROM written
ON CONFLICT (call_key) DO UPDATE SET revision = EXCLUDED.revision";

async fn write(tx: &Transaction<'_>, calls: &[Call]) -> Result<u64, tokio_postgres::Error> {
    if calls.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&str> = calls.iter().map(|c| c.call_key.as_str()).collect();
    let json: Vec<Vec<u8>> = calls
        .iter()
        .map(|c| serde_json::to_vec(c).expect("a call always serializes"))
        .collect();
    let json: Vec<RawJsonb<'_>> = json.iter().map(|j| RawJsonb(j)).collect();
    tx.execute(WRITE_SQL, &[&keys, &json]).await
}
