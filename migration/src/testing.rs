//! Throw-away databases for tests (feature `test-util`).
//!
//! ```ignore
//! for db in TestDatabase::all().await {
//!     let db = db.migrated().await;
//!     // ... exercise db.conn ...
//!     db.drop_database().await;
//! }
//! ```
//!
//! SQLite is always available: a fresh file in a temporary directory that lives as long as the
//! [`TestDatabase`]. PostgreSQL is used when `TEST_DATABASE_URL` points at a server (for example
//! `postgres://postgres@127.0.0.1:5432/test`): each [`TestDatabase::postgres`] creates its own
//! database `portcullis_t_<uuid>` there, so tests never share state.
//!
//! Setup failures panic with a message saying what failed: this is test-only code, and a test
//! that cannot get its database has nothing better to do.
#![expect(
    clippy::expect_used,
    reason = "test-only helpers: a setup failure must abort the test with a clear message"
)]

use std::sync::Once;

use sea_orm::{ConnectionTrait, DatabaseConnection};
use tempfile::TempDir;

use crate::{Migrator, MigratorTrait, connect};

/// Environment variable naming the PostgreSQL server tests may create databases on.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// Prefix of every database [`TestDatabase::postgres`] creates, so leftovers are easy to spot.
pub const DATABASE_PREFIX: &str = "portcullis_t_";

/// Which database engine a [`TestDatabase`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// An SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the `TEST_DATABASE_URL` server.
    Postgres,
}

/// A fresh, empty (or, after [`TestDatabase::migrated`], fully migrated) database.
#[derive(Debug)]
pub struct TestDatabase {
    /// Pool opened with [`crate::connect`], exactly as the application opens it.
    pub conn: DatabaseConnection,
    /// URL of the database, for handing to the application under test (`DATABASE_URL`).
    pub url: String,
    /// SQLite or PostgreSQL.
    pub backend: Backend,
    /// Keeps the SQLite file's directory alive; deleted on drop.
    _dir: Option<TempDir>,
    /// For PostgreSQL: the server URL and the name of the database to drop at the end.
    created: Option<CreatedDatabase>,
}

/// A PostgreSQL database created by [`TestDatabase::postgres`].
#[derive(Debug)]
struct CreatedDatabase {
    /// `TEST_DATABASE_URL`: where to connect to drop it.
    admin_url: String,
    /// `portcullis_t_<uuid>`.
    name: String,
}

// === impl TestDatabase ===

impl TestDatabase {
    /// A new SQLite database in a fresh temporary directory.
    ///
    /// # Panics
    /// When the directory cannot be created or the database cannot be opened.
    pub async fn sqlite() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-test-")
            .tempdir()
            .expect("failed to create a temporary directory for the SQLite test database");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("portcullis.db").display()
        );
        let conn = connect(&url)
            .await
            .unwrap_or_else(|err| panic!("failed to open SQLite test database {url}: {err}"));
        Self {
            conn,
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
            created: None,
        }
    }

    /// A new, empty PostgreSQL database on the `TEST_DATABASE_URL` server, or `None` (after
    /// saying so once on stderr) when the variable is unset. Call
    /// [`TestDatabase::drop_database`] at the end of the test to remove it.
    ///
    /// # Panics
    /// When `TEST_DATABASE_URL` is set but the server cannot be reached or the database cannot
    /// be created: a configured backend that fails is an error, not a skip.
    pub async fn postgres() -> Option<Self> {
        let Ok(admin_url) = std::env::var(TEST_DATABASE_URL) else {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| eprintln!("skipping PostgreSQL: {TEST_DATABASE_URL} is unset"));
            return None;
        };
        let name = format!("{DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());

        // The URL may hold a password: name the variable, never print its value.
        let admin = connect(&admin_url).await.unwrap_or_else(|err| {
            panic!("failed to connect to the server in {TEST_DATABASE_URL}: {err}")
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|err| panic!("failed to create test database {name}: {err}"));
        admin
            .close()
            .await
            .expect("failed to close the PostgreSQL admin connection");

        let url = with_database(&admin_url, &name);
        let conn = connect(&url)
            .await
            .unwrap_or_else(|err| panic!("failed to connect to test database {name}: {err}"));
        Some(Self {
            conn,
            url,
            backend: Backend::Postgres,
            _dir: None,
            created: Some(CreatedDatabase { admin_url, name }),
        })
    }

    /// The PostgreSQL database's name (`None` for SQLite), for statements such as
    /// `ALTER DATABASE` that a test runs from another connection.
    pub fn postgres_name(&self) -> Option<&str> {
        self.created.as_ref().map(|created| created.name.as_str())
    }

    /// SQLite only: takes the write lock from a connection of the caller's own and holds it
    /// until the returned transaction is rolled back. Writes through other connections then
    /// fail (after the 5 s busy timeout where they wait); reads go on.
    ///
    /// # Panics
    /// When the connection, the transaction or the write fails.
    pub async fn hold_write_lock(&self) -> sea_orm::DatabaseTransaction {
        use sea_orm::TransactionTrait;
        let blocker = connect(&self.url).await.expect("second connection");
        let lock = blocker.begin().await.expect("begin");
        lock.execute_unprepared("CREATE TABLE hold_the_write_lock (x INTEGER)")
            .await
            .expect("write lock");
        lock
    }

    /// SQLite, then PostgreSQL when `TEST_DATABASE_URL` is set: run a test on each.
    pub async fn all() -> Vec<Self> {
        let mut all = vec![Self::sqlite().await];
        all.extend(Self::postgres().await);
        all
    }

    /// Applies every migration ([`Migrator::up`]).
    ///
    /// # Panics
    /// When a migration fails.
    pub async fn migrated(self) -> Self {
        Migrator::up(&self.conn, None)
            .await
            .unwrap_or_else(|err| panic!("migrations failed on {:?}: {err}", self.backend));
        self
    }

    /// Closes the pool and removes the database: drops the PostgreSQL database, or deletes the
    /// SQLite file's directory.
    ///
    /// # Panics
    /// When the PostgreSQL database cannot be dropped.
    pub async fn drop_database(self) {
        let Self {
            conn,
            created,
            _dir,
            ..
        } = self;
        conn.close().await.expect("failed to close the test pool");
        let Some(CreatedDatabase { admin_url, name }) = created else {
            return;
        };
        let admin = connect(&admin_url).await.unwrap_or_else(|err| {
            panic!("failed to connect to the server in {TEST_DATABASE_URL}: {err}")
        });
        // FORCE (PostgreSQL 13+) ends connections a test may have leaked, e.g. a spawned server.
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .unwrap_or_else(|err| panic!("failed to drop test database {name}: {err}"));
        admin
            .close()
            .await
            .expect("failed to close the PostgreSQL admin connection");
    }
}

/// `url` with its database (the path) replaced by `database`, keeping any `?query`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(with_database("postgres://h/", "x"), "postgres://h/x");
    }
}
