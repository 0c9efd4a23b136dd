//! A throwaway PostgreSQL cluster from the system's binaries, for tests
//! (`callstream_consumers::pg::throwaway` starts it and makes sure it does
//! not outlive the test process).
//!
//! One cluster per test process (initdb takes seconds), one fresh database
//! per test; the benchmark owns a [`TestCluster`] per measurement instead, so
//! one measurement's rows, buffers and WAL never weigh on the next.

use std::sync::OnceLock;

use callstream_consumers::pg::throwaway::Cluster;
pub use callstream_consumers::pg::throwaway::Durability;

/// A PostgreSQL server in a temporary directory, stopped (and the directory
/// deleted) when dropped or when this process exits.
pub struct TestCluster(Cluster);

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

impl TestCluster {
    /// Starts a new cluster (initdb, then the server; a few seconds).
    pub fn start(durability: Durability) -> TestCluster {
        match Cluster::start(durability) {
            Ok(cluster) => TestCluster(cluster),
            Err(e) => panic!("the test cluster did not start: {e:#}"),
        }
    }

    /// A fresh, empty database in this cluster.
    pub async fn database(&self) -> TestDatabase {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let url = self
            .0
            .create_database(&name)
            .await
            .expect("create test database");
        TestDatabase { url, name }
    }
}

/// A fresh, empty database in a test cluster.
pub struct TestDatabase {
    pub url: String,
    pub name: String,
}

impl TestDatabase {
    /// A database in this process's shared, fast (non-durable) cluster.
    pub async fn create() -> TestDatabase {
        CLUSTER
            .get_or_init(|| TestCluster::start(Durability::Fast))
            .database()
            .await
    }

    /// A new connection to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }
}
