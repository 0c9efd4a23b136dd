//! PostgreSQL: connection, migrations (versioned SQL in `consumers/migrations`,
//! applied at start-up by refinery), and the consumer offsets that are
//! written in the same transaction as the rows they account for.

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, GenericClient, NoTls};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Connects and drives the connection on a background task.
pub async fn connect(url: &SecretString) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url.expose_secret(), NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Applies every migration not yet applied.
pub async fn migrate(client: &mut Client) -> Result<(), refinery::Error> {
    let report = embedded::migrations::runner().run_async(client).await?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// The next offset to process for a partition, if this group stored one.
pub async fn load_offset(
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

/// Moves a partition's stored position from `from` to `to`, inside the
/// caller's transaction. Returns false (the caller must roll back) when the
/// stored position is not `from`: another instance processed this range
/// first, e.g. after a rebalance. This fencing is what keeps a batch from
/// being applied twice.
pub async fn advance_offset(
    tx: &impl GenericClient,
    group: &str,
    topic: &str,
    partition: i32,
    from: Option<i64>,
    to: i64,
) -> Result<bool, tokio_postgres::Error> {
    let updated = match from {
        Some(from) => {
            tx.execute(
                "UPDATE consumer_offsets SET next_offset = $5, updated_at = now()
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
                &[&group, &topic, &partition, &from, &to],
            )
            .await?
        }
        None => {
            tx.execute(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&group, &topic, &partition, &to],
            )
            .await?
        }
    };
    Ok(updated == 1)
}
