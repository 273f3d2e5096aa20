//! The SQL node store: the original's table `lb_nodes(address PRIMARY KEY)` in SQLite,
//! PostgreSQL or MySQL/MariaDB, so old and new balancers can share one database.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::{mysql::MySqlPoolOptions, postgres::PgPoolOptions, sqlite::SqlitePoolOptions};
use tracing::warn;

use super::{BoxFuture, Store, StoreError};
use crate::config::DbUrl;
use crate::node::NodeAddr;

/// Every store call is bounded: a database that hangs must not hang the API.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

pub struct SqlStore {
    pool: Pool,
    /// Logs invalid stored rows once, not every poll.
    warned_invalid: AtomicBool,
}

impl SqlStore {
    /// Connects and creates the table if missing. The error names the URL without its password.
    pub async fn connect(db: &DbUrl) -> Result<SqlStore, String> {
        let redacted = db.redacted();
        let fail = |e: sqlx::Error| format!("cannot open node store {redacted}: {}", scrub(&e.to_string(), db));
        // A balancer makes a handful of small queries per interval: a few connections suffice.
        let pool = match db {
            DbUrl::SqliteMemory => {
                // Every connection to :memory: is its own database: keep exactly one, forever.
                let p = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect("sqlite::memory:")
                    .await
                    .map_err(fail)?;
                Pool::Sqlite(p)
            }
            DbUrl::SqliteFile(path) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .busy_timeout(QUERY_TIMEOUT);
                let p = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(fail)?;
                Pool::Sqlite(p)
            }
            DbUrl::Postgres(url) => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(fail)?,
            ),
            DbUrl::Mysql(url) => Pool::MySql(
                MySqlPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect(url)
                    .await
                    .map_err(fail)?,
            ),
            DbUrl::K8s => return Err("-db=k8s is not a SQL store".into()),
        };
        let store = SqlStore { pool, warned_invalid: AtomicBool::new(false) };
        store.create_table().await.map_err(|e| format!("cannot create table lb_nodes in {redacted}: {e}"))?;
        Ok(store)
    }

    async fn create_table(&self) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query("CREATE TABLE IF NOT EXISTS lb_nodes (address text NOT NULL PRIMARY KEY)")
                    .execute(p)
                    .await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("CREATE TABLE IF NOT EXISTS lb_nodes (address text NOT NULL PRIMARY KEY)")
                    .execute(p)
                    .await?;
            }
            // MySQL refuses a text primary key without a length: the original's DDL failed here.
            Pool::MySql(p) => {
                sqlx::query("CREATE TABLE IF NOT EXISTS lb_nodes (address VARCHAR(255) NOT NULL PRIMARY KEY)")
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    async fn list_rows(&self) -> Result<Vec<String>, sqlx::Error> {
        const Q: &str = "SELECT address FROM lb_nodes";
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(Q).fetch_all(p).await,
            Pool::Postgres(p) => sqlx::query_scalar(Q).fetch_all(p).await,
            Pool::MySql(p) => sqlx::query_scalar(Q).fetch_all(p).await,
        }
    }

    async fn insert(&self, node: &str) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query("INSERT OR IGNORE INTO lb_nodes (address) VALUES (?)").bind(node).execute(p).await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("INSERT INTO lb_nodes (address) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(node)
                    .execute(p)
                    .await?;
            }
            Pool::MySql(p) => {
                sqlx::query("INSERT IGNORE INTO lb_nodes (address) VALUES (?)").bind(node).execute(p).await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, node: &str) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query("DELETE FROM lb_nodes WHERE address = ?").bind(node).execute(p).await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("DELETE FROM lb_nodes WHERE address = $1").bind(node).execute(p).await?;
            }
            Pool::MySql(p) => {
                sqlx::query("DELETE FROM lb_nodes WHERE address = ?").bind(node).execute(p).await?;
            }
        }
        Ok(())
    }
}

async fn bounded<T>(f: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable(format!("no answer within {QUERY_TIMEOUT:?}"))),
    }
}

/// Removes a password that a driver error might echo back.
fn scrub(msg: &str, db: &DbUrl) -> String {
    match db.password() {
        Some(pw) if !pw.is_empty() => msg.replace(pw, "***"),
        _ => msg.to_string(),
    }
}

impl Store for SqlStore {
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeAddr>, StoreError>> {
        Box::pin(async move {
            let rows = bounded(self.list_rows()).await?;
            let mut nodes = Vec::with_capacity(rows.len());
            for row in rows {
                match NodeAddr::parse(&row) {
                    Ok(a) => nodes.push(a),
                    Err(error) => {
                        if !self.warned_invalid.swap(true, Ordering::Relaxed) {
                            warn!(row = %row, %error, "ignoring a stored node that is not a node address");
                        }
                    }
                }
            }
            Ok(nodes)
        })
    }

    fn add<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(bounded(self.insert(node.as_str())))
    }

    fn remove<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(bounded(self.delete(node.as_str())))
    }
}
