//! The store's database, reconnected when the connection is gone: the
//! console keeps serving (with 503 pages meanwhile) across a PostgreSQL
//! restart instead of needing one itself.

use std::sync::Arc;

use secrecy::SecretString;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Error, Row};

pub struct Db {
    url: SecretString,
    client: tokio::sync::Mutex<Arc<Client>>,
}

impl Db {
    /// Connects and applies the migrations (the audit table is one).
    pub async fn open(url: &SecretString) -> anyhow::Result<Db> {
        let mut client = callstream_consumers::pg::connect(url).await?;
        callstream_consumers::pg::migrate(&mut client).await?;
        Ok(Db {
            url: url.clone(),
            client: tokio::sync::Mutex::new(Arc::new(client)),
        })
    }

    async fn client(&self) -> Result<Arc<Client>, Error> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = Arc::new(callstream_consumers::pg::connect(&self.url).await?);
        }
        Ok(client.clone())
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.client().await?.query(sql, params).await
    }

    pub async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.client().await?.query_opt(sql, params).await
    }

    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.client().await?.execute(sql, params).await
    }
}
