//! The record of every action taken in the console (`console_actions`,
//! migration V10): written before the action's answer is shown, so an
//! answer the user saw always has its row.

use chrono::{DateTime, Utc};

use crate::db::Db;

/// One row of `console_actions`.
#[derive(Debug, Clone)]
pub struct Action {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub letter: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

pub async fn record(
    db: &Db,
    actor: &str,
    action: &str,
    letter: &str,
    outcome: &str,
    detail: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO console_actions (actor, action, letter, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5)",
        &[&actor, &action, &letter, &outcome, detail],
    )
    .await?;
    Ok(())
}

/// The newest `limit` actions, newest first.
pub async fn newest(db: &Db, limit: i64) -> Result<Vec<Action>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT at, actor, action, letter, outcome, detail FROM console_actions \
             ORDER BY at DESC, id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Action {
            at: r.get(0),
            actor: r.get(1),
            action: r.get(2),
            letter: r.get(3),
            outcome: r.get(4),
            detail: r.get(5),
        })
        .collect())
}
