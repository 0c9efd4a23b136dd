//! Calls in PostgreSQL: the `calls` table (migration `V8__calls.sql`), one
//! row per call, merged by `callstream-store` from the events it stores,
//! and published to `callstream.calls.v1` from there ([`outbox`]).
//!
//! Which events make one call, and how they merge, is
//! [`callstream_schemas::call`]: the one place the merge rules live.
//!
//! Guarantee: the `calls` row of every call the store has an event of holds
//! the merge of that call's stored events, committed in the transaction
//! that stores them (so with the Kafka positions: a crash or a replay
//! leaves one row per call, never a half-merged one). The row's `revision`
//! goes up by one exactly when the merged call changes.
//!
//! Two transactions touching one call (two partitions, or two store
//! instances during a rebalance) must not merge it from each other's
//! uncommitted events: each takes a transaction-level advisory lock per
//! call key ([`lock`]), in one order, after writing its events and before
//! reading the call's events back, so the second merges with the first's
//! events committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::pg::RawJsonb;

use callstream_schemas::call::Call;
use callstream_schemas::Event;

pub mod outbox;

/// The first key of the two-key advisory locks that guard calls (`call`
/// in ASCII); the second is the call key's `hashtext`. Two-key locks do not
/// share a space with the one-key migration lock.
const LOCK_CLASS: i32 = 0x6361_6c6c;

/// Takes the advisory lock of each key, in one order (by hash), for the
/// rest of the transaction. Two keys sharing a hash share a lock, which
/// only serializes them.
pub(crate) async fn lock(tx: &Transaction<'_>, keys: &[&str]) -> Result<(), tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT count(pg_advisory_xact_lock($1, h)) FROM
            (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k ORDER BY 1) AS locks",
        &[&LOCK_CLASS, &keys],
    )
    .await?;
    Ok(())
}

/// Merges the calls of `keys` again from their events in `events` and
/// writes those whose merge changed into `calls` (and their keys into
/// `calls_outbox`, for [`outbox`]). `fresh` holds the events this
/// transaction just wrote, by `event_id`: those are not read back (in a
/// catch-up most calls have no other event, and parsing stored JSON again
/// was most of the cost). Returns how many calls changed.
pub(crate) async fn merge(
    tx: &Transaction<'_>,
    keys: &BTreeSet<String>,
    fresh: &HashMap<Uuid, &Event>,
) -> Result<u64, tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    lock(tx, &keys).await?;
    let fresh_ids: Vec<Uuid> = fresh.keys().copied().collect();
    // One index look-up per key, whatever the planner estimates: on a new
    // table without statistics it took `call_key = ANY($1)` for most of
    // the table and scanned all of it, each batch (`OFFSET 0` keeps the
    // look-up from being flattened into a join it could plan that way).
    let rows = tx
        .query(
            "SELECT k.key, e.event_id,
                    CASE WHEN e.event_id = ANY($2) THEN NULL ELSE e.event::text END
             FROM unnest($1::text[]) AS k(key)
             JOIN LATERAL (SELECT event_id, event FROM events
                           WHERE events.call_key = k.key OFFSET 0) AS e ON true",
            &[&keys, &fresh_ids],
        )
        .await?;
    let mut stored: Vec<(String, Event)> = Vec::new();
    let mut members: BTreeMap<String, Vec<&Event>> = BTreeMap::new();
    for row in &rows {
        let key: String = row.try_get(0)?;
        let id: Uuid = row.try_get(1)?;
        match row.try_get::<_, Option<&str>>(2)? {
            None => {
                if let Some(event) = fresh.get(&id) {
                    members.entry(key).or_default().push(event);
                }
            }
            Some(json) => match serde_json::from_str::<Event>(json) {
                Ok(event) => stored.push((key, event)),
                // Stored from a record that parsed as an event; only a hand
                // edit of the table gets here.
                Err(e) => {
                    tracing::error!(call_key = %key, error = %e, "a stored event is not an event any more; merging its call without it")
                }
            },
        }
    }
    for (key, event) in &stored {
        members.entry(key.clone()).or_default().push(event);
    }
    let calls: Vec<Call> = members
        .values()
        .filter_map(|events| Call::from_refs(events))
        .collect();
    write(tx, &calls).await
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
