//! PostgreSQL: connection, migrations (versioned SQL in `consumers/migrations`,
//! applied at start-up by refinery), and the consumer offsets that are
//! written in the same transaction as the rows they account for; and
//! [`throwaway`] clusters, for tests and `callstream-dev`.

pub mod settings;
pub mod throwaway;

use bytes::{BufMut, BytesMut};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, GenericClient, NoTls};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connects and drives the connection on a background task.
pub async fn connect(url: &SecretString) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config(url.expose_secret())?.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The connection settings of `url`, with defaults that notice a database
/// that went away without closing the connection (a host or network gone):
/// tokio-postgres would otherwise wait on it for hours (TCP keepalive after
/// 2 h idle, no connect timeout), and a consumer waiting on a dead
/// connection neither retries nor reports an error. Settings the URL names
/// (`connect_timeout`, `keepalives_idle`, `keepalives_interval`,
/// `keepalives_retries`, `tcp_user_timeout`) are kept.
pub fn config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    use std::time::Duration;
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // tokio-postgres's default, which cannot be told from one set in the URL.
    if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    // Data sent and not acknowledged for this long: the connection is dead.
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    // JIT compiles a statement whose estimated cost is high (a batch's
    // look-ups on a table without statistics yet): tens of milliseconds
    // per statement, for statements that run in a few. Off unless the
    // URL's `options` say otherwise.
    let options = config.get_options().unwrap_or_default().to_string();
    if !options.contains("jit") {
        config.options(format!("{options} -c jit=off").trim());
    }
    Ok(config)
}

/// Waits between attempts on a failing database: from 0.1 s doubling to
/// `max`, with jitter, without end (the caller stops on shutdown).
pub fn backoff(max: std::time::Duration) -> callstream_runtime::backoff::Backoff {
    callstream_runtime::backoff::Backoff::exponential(std::time::Duration::from_millis(100), max)
}

/// Whether a failed connection attempt may succeed if tried again: the
/// server unreachable, starting up, shutting down, out of connection slots,
/// or not taking connections to this database for now. A refused login
/// (SQLSTATE class 28) or a database that does not exist (3D000) is a
/// configuration error that waiting does not fix.
pub(crate) fn connect_error_is_transient(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            !(code.starts_with("28") || code == "3D000")
        }
    }
}

/// The key of the PostgreSQL advisory lock (`pg_advisory_lock(bigint)`)
/// under which every callstream process migrates a database: "callstrm" in
/// ASCII. Without it, `callstream-store` and `callstream-analytics` started
/// together on an empty database both created refinery's history table and
/// the first tables at once, and one died on a duplicate key in PostgreSQL's
/// catalog (`pg_type_typname_nsp_index`).
pub const MIGRATION_LOCK_KEY: i64 = 0x6361_6c6c_7374_726d;

/// How often a process waiting for the migration lock tries it again, and
/// how often it says who holds it.
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
const LOCK_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot take or release the migration lock: {0}")]
    Lock(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Migration(#[from] refinery::Error),
}

/// Applies every migration not yet applied.
pub async fn migrate(client: &mut Client) -> Result<(), MigrateError> {
    migrate_up_to(client, None).await
}

/// Applies the migrations not yet applied, up to and including `version`
/// (all with `None`): a database as an older release left it, for upgrade
/// tests and staged roll-outs.
///
/// One process at a time: the migrations run holding the session-level
/// advisory lock [`MIGRATION_LOCK_KEY`] on `client`'s connection, which
/// they also run on; a process that finds it taken waits, then finds the
/// migrations applied. The lock is released after them, failed or not, and
/// by PostgreSQL when the connection ends: a process that dies mid-migration
/// does not leave it held (refinery applies each migration in a
/// transaction, so the next holder starts from the last one committed).
///
/// A holder that neither finishes nor dies (a hung process, a session left
/// open by hand) would be waited for without end: there is no timeout,
/// because a long migration on a large table is legitimate. Instead the
/// waiting process names the holder's backend (pid, application, client,
/// state) at once (INFO: processes started together wait for each other),
/// then every 30 s in a WARN saying how to end it
/// (`pg_terminate_backend(pid)`); and a caller that must stop drops this
/// future (the binaries do on SIGTERM).
pub async fn migrate_up_to(client: &mut Client, version: Option<i32>) -> Result<(), MigrateError> {
    take_migration_lock(client).await?;
    let mut runner = embedded::migrations::runner();
    if let Some(version) = version {
        runner = runner.set_target(refinery::Target::Version(version));
    }
    let applied = runner.run_async(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = applied?;
    unlocked?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Takes the migration lock, waiting for its holder (see [`migrate_up_to`]).
async fn take_migration_lock(client: &Client) -> Result<(), tokio_postgres::Error> {
    let started = std::time::Instant::now();
    let mut next_report = started;
    loop {
        let free: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await?
            .get(0);
        if free {
            if next_report > started {
                tracing::info!(
                    waited_secs = started.elapsed().as_secs(),
                    "took the migration lock"
                );
            }
            return Ok(());
        }
        if std::time::Instant::now() >= next_report {
            // Processes started together wait for each other's migrations
            // (an INFO line); still waiting 30 s on, the holder may be stuck.
            let first = next_report == started;
            next_report = std::time::Instant::now() + LOCK_REPORT_EVERY;
            let Some(holder) = migration_lock_holder(client).await? else {
                continue; // released in between: the next try takes it
            };
            let waited_secs = started.elapsed().as_secs();
            if first {
                tracing::info!(
                    holder_pid = holder.pid,
                    holder_application = %holder.application,
                    holder_client = %holder.client,
                    holder_state = %holder.state,
                    "another session holds the database's migration lock (migrating it): waiting"
                );
            } else {
                tracing::warn!(
                    waited_secs,
                    holder_pid = holder.pid,
                    holder_application = %holder.application,
                    holder_client = %holder.client,
                    holder_state = %holder.state,
                    "still waiting for the database's migration lock; if the session holding it \
                     is stuck, SELECT pg_terminate_backend(holder_pid) ends it"
                );
            }
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// The PostgreSQL session holding the migration lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: i32,
    pub application: String,
    /// Its address, or `local` (a Unix socket).
    pub client: String,
    /// `pg_stat_activity.state`: `idle`, `active`, `idle in transaction`...
    pub state: String,
}

/// Who holds the migration lock, if anyone does.
pub async fn migration_lock_holder(
    client: &Client,
) -> Result<Option<LockHolder>, tokio_postgres::Error> {
    // A bigint advisory key is stored as its high half in `classid` and its
    // low half in `objid`, with `objsubid` 1.
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(a.application_name, ''),
                    coalesce(host(a.client_addr), 'local'), coalesce(a.state, '')
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1
             LIMIT 1",
            &[&MIGRATION_LOCK_KEY],
        )
        .await?;
    Ok(row.map(|row| LockHolder {
        pid: row.get(0),
        application: row.get(1),
        client: row.get(2),
        state: row.get(3),
    }))
}

/// The next offset to process for a partition, if this group stored one.
pub(crate) async fn load_offset(
    client: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT next_offset FROM consumer_offsets
             WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// One partition's move: its stored position before the batch (`None`: no
/// row yet) and the next offset after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetMove {
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
}

/// Moves every partition's stored position from `from` to `to`, inside the
/// caller's transaction, in one statement (one round trip however many
/// partitions a batch touches; one statement per partition made the store
/// 3× slower at 25 partitions, see BENCHMARKS.md). Returns false (the caller
/// must roll back) when any stored position is not its `from`: another
/// instance processed that range first, e.g. after a rebalance. This
/// fencing is what keeps a batch from being applied twice.
pub(crate) async fn advance_offsets(
    tx: &impl GenericClient,
    group: &str,
    topic: &str,
    moves: &[OffsetMove],
) -> Result<bool, tokio_postgres::Error> {
    let partitions: Vec<i32> = moves.iter().map(|m| m.partition).collect();
    let froms: Vec<Option<i64>> = moves.iter().map(|m| m.from).collect();
    let tos: Vec<i64> = moves.iter().map(|m| m.to).collect();
    let row = tx
        .query_one(
            "WITH moves AS (
                 SELECT * FROM unnest($3::int[], $4::bigint[], $5::bigint[])
                     AS m(partition, from_offset, to_offset)
             ), updated AS (
                 UPDATE consumer_offsets o SET next_offset = m.to_offset, updated_at = now()
                 FROM moves m
                 WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = m.partition
                   AND m.from_offset IS NOT NULL AND o.next_offset = m.from_offset
                 RETURNING 1
             ), inserted AS (
                 INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 SELECT $1, $2, m.partition, m.to_offset FROM moves m WHERE m.from_offset IS NULL
                 ON CONFLICT DO NOTHING
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM inserted)",
            &[&group, &topic, &partitions, &froms, &tos],
        )
        .await?;
    let moved: i64 = row.get(0);
    Ok(moved == moves.len() as i64)
}

/// JSON bytes bound as `jsonb` as they are: a record's value as received
/// (the store: the event as published, not serialized again from its
/// parsed form, a cost per row in the store's own CPU), or a value just
/// serialized. The bytes must be valid JSON.
#[derive(Debug)]
pub(crate) struct RawJsonb<'a>(pub(crate) &'a [u8]);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1); // jsonb's binary format: a version byte, then the text
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_dead_connection_is_noticed_in_about_a_minute_unless_the_url_says_otherwise() {
        let c = super::config("postgres://u@db/callstream").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(10)));
        assert_eq!(c.get_keepalives_retries(), Some(3));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(60)));

        let c = super::config(
            "postgres://u@db/callstream?connect_timeout=3&keepalives_idle=5&keepalives_interval=2&keepalives_retries=9&tcp_user_timeout=7",
        )
        .unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
        assert_eq!(c.get_keepalives_retries(), Some(9));
        assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
    }

    #[test]
    fn jit_is_off_unless_the_url_sets_it() {
        let c = super::config("postgres://u@db/callstream").unwrap();
        assert_eq!(c.get_options(), Some("-c jit=off"));
        let c = super::config("postgres://u@db/x?options=-c%20statement_timeout%3D5s").unwrap();
        assert_eq!(c.get_options(), Some("-c statement_timeout=5s -c jit=off"));
        let c = super::config("postgres://u@db/x?options=-c%20jit%3Don").unwrap();
        assert_eq!(c.get_options(), Some("-c jit=on"));
    }
}
