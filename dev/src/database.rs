//! The PostgreSQL of the store, analytics and the console: `DATABASE_URL`
//! when it is set, else a throwaway cluster from the system's binaries
//! (`PG_BIN`, default `/usr/lib/postgresql/15/bin`) that lives and dies
//! with this process.

use anyhow::Context;

use callstream_consumers::pg::throwaway::{Cluster, Durability, DEFAULT_BIN};

/// The database the throwaway cluster gets.
const DATABASE: &str = "callstream";

pub enum Database {
    /// `DATABASE_URL`'s.
    Given(String),
    /// Dropping it stops the server and deletes its directory.
    Throwaway { cluster: Cluster, url: String },
}

impl Database {
    /// `DATABASE_URL`'s database, or a new throwaway cluster (a few
    /// seconds: initdb, then the server).
    pub async fn from_env() -> anyhow::Result<Database> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return Ok(Database::Given(url));
        }
        // Said before it happens: initdb takes a few seconds.
        println!(
            "DATABASE_URL is not set: starting a throwaway PostgreSQL cluster, deleted on exit"
        );
        let cluster = tokio::task::spawn_blocking(|| Cluster::start(Durability::Fast))
            .await?
            .with_context(|| {
                format!(
                    "DATABASE_URL is not set, and no throwaway PostgreSQL cluster could start from \
                     the system's binaries (PG_BIN, default {DEFAULT_BIN}); set one of them"
                )
            })?;
        let url = cluster.create_database(DATABASE).await?;
        Ok(Database::Throwaway { cluster, url })
    }

    pub fn url(&self) -> &str {
        match self {
            Database::Given(url) | Database::Throwaway { url, .. } => url,
        }
    }

    /// Where it is and whose it is, for the summary (no password).
    pub fn describe(&self) -> String {
        match self {
            Database::Given(url) => format!("{} (DATABASE_URL)", without_password(url)),
            Database::Throwaway { cluster, url } => format!(
                "{url} (throwaway cluster in {}, deleted on exit)",
                cluster.dir().display()
            ),
        }
    }
}

/// `url` with its password masked (in the user part or a parameter); a
/// `key=value` connection string is not repeated at all.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "a key=value connection string".to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    // The password may be a parameter too.
    let path = match path.split_once('?') {
        Some((path, query)) if query.contains("password") => format!("{path}?****"),
        _ => path.to_string(),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') { ":****" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn the_summary_never_shows_the_password() {
        assert_eq!(
            without_password("postgres://cs:s3cret@db:5432/callstream?sslmode=disable"),
            "postgres://cs:****@db:5432/callstream?sslmode=disable"
        );
        assert_eq!(
            without_password("postgresql://cs@db/callstream"),
            "postgresql://cs@db/callstream"
        );
        assert_eq!(
            without_password("postgres://cs@db/callstream?password=s3cret"),
            "postgres://cs@db/callstream?****"
        );
        assert_eq!(
            without_password("host=db password=s3cret"),
            "a key=value connection string"
        );
    }
}
