//! The SQL node store: the original's table `lb_nodes(address PRIMARY KEY)` in SQLite,
//! PostgreSQL or MySQL/MariaDB, so old and new balancers can share one database.
//!
//! Outages: every call is bounded by [`QUERY_TIMEOUT`]; a pooled connection is tested before
//! use, so connections a database restart or a network cut killed are replaced, and the store
//! recovers by itself when the database answers again.
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection};
use tracing::warn;

use super::{BoxFuture, Store, StoreError};
use crate::discovery::db_url::DbUrl;
use crate::node::NodeAddr;

/// Every store call is bounded: a database that hangs must not hang the API or the poller.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// An idle connection that does not answer a ping within this is replaced by a new one.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections per balancer to a database server: the poller uses one per interval, PUT and
/// DELETE another. Ten balancers hold at most 20 of PostgreSQL's default 100.
const MAX_CONNECTIONS: u32 = 2;

/// The second connection (API writes) is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinct invalid rows remembered so each is logged once (bounded: the table is not ours).
const MAX_WARNED_ROWS: usize = 256;

// The heartbeat statements, per database: `now` is the database's clock in Unix seconds.
const PG_BEAT: &str = "INSERT INTO lb_balancers (id, seen, expires) \
    VALUES ($1, EXTRACT(EPOCH FROM now())::bigint, EXTRACT(EPOCH FROM now())::bigint + $2) \
    ON CONFLICT (id) DO UPDATE SET seen = EXCLUDED.seen, expires = EXCLUDED.expires";
const PG_COUNT: &str = "SELECT COUNT(*) FROM lb_balancers WHERE expires >= EXTRACT(EPOCH FROM now())::bigint";
const PG_SWEEP: &str = "DELETE FROM lb_balancers WHERE id IN (SELECT id FROM lb_balancers \
    WHERE expires < EXTRACT(EPOCH FROM now())::bigint - 60 LIMIT 100)";
const MYSQL_BEAT: &str =
    "INSERT INTO lb_balancers (id, seen, expires) VALUES (?, UNIX_TIMESTAMP(), UNIX_TIMESTAMP() + ?) \
    ON DUPLICATE KEY UPDATE seen = VALUES(seen), expires = VALUES(expires)";
const MYSQL_COUNT: &str = "SELECT COUNT(*) FROM lb_balancers WHERE expires >= UNIX_TIMESTAMP()";
const MYSQL_SWEEP: &str = "DELETE FROM lb_balancers WHERE expires < UNIX_TIMESTAMP() - 60 LIMIT 100";
const SQLITE_BEAT: &str = "INSERT INTO lb_balancers (id, seen, expires) \
    VALUES (?, CAST(strftime('%s','now') AS INTEGER), CAST(strftime('%s','now') AS INTEGER) + ?) \
    ON CONFLICT(id) DO UPDATE SET seen = excluded.seen, expires = excluded.expires";
const SQLITE_COUNT: &str = "SELECT COUNT(*) FROM lb_balancers WHERE expires >= CAST(strftime('%s','now') AS INTEGER)";
const SQLITE_SWEEP: &str = "DELETE FROM lb_balancers WHERE id IN (SELECT id FROM lb_balancers \
    WHERE expires < CAST(strftime('%s','now') AS INTEGER) - 60 LIMIT 100)";

enum Pool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

pub(crate) struct SqlStore {
    pool: Pool,
    /// Invalid stored rows already logged: each is logged once, not every poll.
    warned_rows: Mutex<HashSet<String>>,
    /// `lb_balancers` is known to exist.
    heartbeat_table: std::sync::atomic::AtomicBool,
}

/// Connection options parsed from a `-db` URL.
enum Options {
    Postgres(PgConnectOptions),
    MySql(MySqlConnectOptions),
}

/// Parses a PostgreSQL or MySQL `-db` URL the way [`SqlStore::connect`] will (for example an
/// unknown `sslmode` is an error), without connecting. `Ok` for SQLite and `k8s`. The error
/// never contains the password.
pub(crate) fn check_url(db: &DbUrl) -> Result<(), String> {
    parse_options(db).map(|_| ())
}

fn parse_options(db: &DbUrl) -> Result<Option<Options>, String> {
    let opts = match db {
        DbUrl::Postgres(url) => {
            let o = PgConnectOptions::from_str(url).map_err(|e| scrub(&innermost(&e), db))?;
            // Lets an operator tell the balancers' sessions apart in pg_stat_activity.
            let o = if o.get_application_name().is_none() { o.application_name("fnlb") } else { o };
            Options::Postgres(o)
        }
        DbUrl::Mysql(url) => Options::MySql(MySqlConnectOptions::from_str(url).map_err(|e| scrub(&innermost(&e), db))?),
        _ => return Ok(None),
    };
    Ok(Some(opts))
}

/// Runs one statement on a pooled connection to a database server (PostgreSQL, MySQL), bounded
/// by [`QUERY_TIMEOUT`] in all, waiting for a connection included. A connection whose statement
/// timed out or failed on the wire is closed rather than returned: sqlx pings a returned
/// connection without a time limit, so a database that black-holes packets would otherwise keep
/// the pool's few slots until the kernel gives up on the socket (minutes).
macro_rules! on_server {
    ($pool:expr, |$conn:ident| $statement:expr) => {{
        let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
        match tokio::time::timeout_at(deadline, $pool.acquire()).await {
            Err(_) | Ok(Err(sqlx::Error::PoolTimedOut)) => Err(no_connection()),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Ok(Ok(mut pooled)) => {
                let result = {
                    let $conn = &mut *pooled;
                    tokio::time::timeout_at(deadline, $statement).await
                };
                settle(pooled, result)
            }
        }
    }};
}

impl SqlStore {
    /// Connects and creates the table if missing. The error names the URL without its password.
    pub(crate) async fn connect(db: &DbUrl) -> Result<SqlStore, String> {
        let redacted = db.redacted();
        let fail = |e: String| format!("cannot open node store {redacted}: {}", scrub(&e, db));
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
                    .map_err(|e| fail(e.to_string()))?;
                Pool::Sqlite(p)
            }
            DbUrl::SqliteFile(path) => {
                let opts =
                    SqliteConnectOptions::new().filename(path).create_if_missing(true).busy_timeout(QUERY_TIMEOUT);
                let p = SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(QUERY_TIMEOUT)
                    .connect_with(opts)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                Pool::Sqlite(p)
            }
            DbUrl::Postgres(_) | DbUrl::Mysql(_) => match parse_options(db).map_err(fail)? {
                Some(Options::Postgres(o)) => {
                    // One direct connection first: its error says why (refused, auth, no such
                    // database), where the pool would only say that it timed out.
                    probe(o.connect()).await.map_err(fail)?;
                    Pool::Postgres(server_pool::<sqlx::Postgres>(PgPoolOptions::new()).connect_lazy_with(o))
                }
                Some(Options::MySql(o)) => {
                    probe(o.connect()).await.map_err(fail)?;
                    Pool::MySql(server_pool::<sqlx::MySql>(MySqlPoolOptions::new()).connect_lazy_with(o))
                }
                None => unreachable!("parse_options returns options for postgres and mysql"),
            },
            DbUrl::K8s => return Err("-db=k8s is not a SQL store".into()),
        };
        let store = SqlStore { pool, warned_rows: Mutex::new(HashSet::new()), heartbeat_table: Default::default() };
        match tokio::time::timeout(QUERY_TIMEOUT * 2, store.ensure_table()).await {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(format!("cannot create table lb_nodes in {redacted}: {}", scrub(&e.to_string(), db))),
            Err(_) => {
                Err(format!("cannot create table lb_nodes in {redacted}: no answer within {:?}", QUERY_TIMEOUT * 2))
            }
        }
    }

    /// Uses an existing `lb_nodes` as it is (the original's, or one an administrator made for a
    /// user without CREATE rights); creates it otherwise. Balancers starting together may race
    /// to create it (PostgreSQL then fails one `CREATE TABLE IF NOT EXISTS` with a duplicate
    /// key): a table that exists afterwards is success.
    async fn ensure_table(&self) -> Result<(), StoreError> {
        if self.table_exists().await {
            return Ok(());
        }
        match self.create_table().await {
            Ok(()) => Ok(()),
            Err(_) if self.table_exists().await => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn table_exists(&self) -> bool {
        const Q: &str = "SELECT address FROM lb_nodes WHERE 1 = 0";
        let r = match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query(Q).fetch_optional(p)).await.map(drop),
            Pool::Postgres(p) => on_server!(p, |c| sqlx::query(Q).fetch_optional(c)).map(drop),
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(Q).fetch_optional(c)).map(drop),
        };
        r.is_ok()
    }

    async fn create_table(&self) -> Result<(), StoreError> {
        const TEXT_KEY: &str = "CREATE TABLE IF NOT EXISTS lb_nodes (address text NOT NULL PRIMARY KEY)";
        // MySQL refuses a text primary key without a length: the original's DDL failed there.
        const VARCHAR_KEY: &str = "CREATE TABLE IF NOT EXISTS lb_nodes (address VARCHAR(255) NOT NULL PRIMARY KEY)";
        match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query(TEXT_KEY).execute(p)).await.map(drop),
            Pool::Postgres(p) => on_server!(p, |c| sqlx::query(TEXT_KEY).execute(c)).map(drop),
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(VARCHAR_KEY).execute(c)).map(drop),
        }
    }

    /// Every row as text. The casts accept any column type an administrator may have chosen
    /// (`varchar`, `char`, a binary collation); NULLs are skipped, not fatal.
    async fn list_rows(&self) -> Result<Vec<Option<String>>, StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query_scalar("SELECT address FROM lb_nodes").fetch_all(p)).await,
            Pool::Postgres(p) => {
                on_server!(p, |c| sqlx::query_scalar("SELECT address::text FROM lb_nodes").fetch_all(c))
            }
            Pool::MySql(p) => {
                on_server!(p, |c| sqlx::query_scalar("SELECT CAST(address AS CHAR) FROM lb_nodes").fetch_all(c))
            }
        }
    }

    async fn insert(&self, node: &str) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                bounded(sqlx::query("INSERT OR IGNORE INTO lb_nodes (address) VALUES (?)").bind(node).execute(p))
                    .await
                    .map(drop)
            }
            Pool::Postgres(p) => {
                on_server!(p, |c| sqlx::query("INSERT INTO lb_nodes (address) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(node)
                    .execute(c))
                .map(drop)
            }
            // Not `INSERT IGNORE`: that would also store an over-long address silently truncated.
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(
                "INSERT INTO lb_nodes (address) VALUES (?) ON DUPLICATE KEY UPDATE address = address"
            )
            .bind(node)
            .execute(c))
            .map(drop),
        }
    }

    async fn delete(&self, node: &str) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => {
                bounded(sqlx::query("DELETE FROM lb_nodes WHERE address = ?").bind(node).execute(p)).await.map(drop)
            }
            Pool::Postgres(p) => {
                on_server!(p, |c| sqlx::query("DELETE FROM lb_nodes WHERE address = $1").bind(node).execute(c))
                    .map(drop)
            }
            Pool::MySql(p) => {
                on_server!(p, |c| sqlx::query("DELETE FROM lb_nodes WHERE address = ?").bind(node).execute(c)).map(drop)
            }
        }
    }

    /// Writes this balancer's heartbeat row (`lb_balancers`, created if missing), good for
    /// `ttl`, and counts the rows that are still good: the balancers alive now, this one
    /// included. Times are the database's clock (whole seconds), so balancers whose clocks
    /// disagree still agree on who is alive.
    pub(crate) async fn heartbeat(&self, id: &str, ttl: Duration) -> Result<u32, StoreError> {
        if !self.heartbeat_table.load(std::sync::atomic::Ordering::Relaxed) {
            self.ensure_heartbeat_table().await?;
            self.heartbeat_table.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let ttl = i64::try_from(ttl.as_secs_f64().ceil() as u64).unwrap_or(i64::MAX).max(1);
        let count: i64 = match &self.pool {
            Pool::Sqlite(p) => {
                bounded(sqlx::query(SQLITE_BEAT).bind(id).bind(ttl).execute(p)).await?;
                bounded(sqlx::query_scalar(SQLITE_COUNT).fetch_one(p)).await?
            }
            Pool::Postgres(p) => {
                on_server!(p, |c| sqlx::query(PG_BEAT).bind(id).bind(ttl).execute(c))?;
                on_server!(p, |c| sqlx::query_scalar(PG_COUNT).fetch_one(c))?
            }
            Pool::MySql(p) => {
                on_server!(p, |c| sqlx::query(MYSQL_BEAT).bind(id).bind(ttl).execute(c))?;
                on_server!(p, |c| sqlx::query_scalar(MYSQL_COUNT).fetch_one(c))?
            }
        };
        // This balancer's own row was just written: it is at least one.
        Ok(u32::try_from(count).unwrap_or(u32::MAX).max(1))
    }

    /// Deletes up to 100 heartbeat rows (the `LIMIT` of the queries above) that expired more than a minute ago (of
    /// balancers that were killed): bounded, so a table full of old rows costs little per sweep.
    pub(crate) async fn sweep_heartbeats(&self) -> Result<u64, StoreError> {
        let done = match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query(SQLITE_SWEEP).execute(p)).await?.rows_affected(),
            Pool::Postgres(p) => on_server!(p, |c| sqlx::query(PG_SWEEP).execute(c))?.rows_affected(),
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(MYSQL_SWEEP).execute(c))?.rows_affected(),
        };
        Ok(done)
    }

    /// Removes this balancer's heartbeat row (clean shutdown): the others count one fewer at
    /// their next heartbeat.
    pub(crate) async fn leave(&self, id: &str) -> Result<(), StoreError> {
        const Q_PG: &str = "DELETE FROM lb_balancers WHERE id = $1";
        const Q: &str = "DELETE FROM lb_balancers WHERE id = ?";
        match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query(Q).bind(id).execute(p)).await.map(drop),
            Pool::Postgres(p) => on_server!(p, |c| sqlx::query(Q_PG).bind(id).execute(c)).map(drop),
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(Q).bind(id).execute(c)).map(drop),
        }
    }

    /// Like [`SqlStore::ensure_table`], for `lb_balancers`.
    async fn ensure_heartbeat_table(&self) -> Result<(), StoreError> {
        const EXISTS: &str = "SELECT id FROM lb_balancers WHERE 1 = 0";
        const TEXT_KEY: &str = "CREATE TABLE IF NOT EXISTS lb_balancers \
            (id text NOT NULL PRIMARY KEY, seen bigint NOT NULL, expires bigint NOT NULL)";
        const VARCHAR_KEY: &str = "CREATE TABLE IF NOT EXISTS lb_balancers \
            (id VARCHAR(255) NOT NULL PRIMARY KEY, seen BIGINT NOT NULL, expires BIGINT NOT NULL)";
        let exists = || async {
            match &self.pool {
                Pool::Sqlite(p) => bounded(sqlx::query(EXISTS).fetch_optional(p)).await.is_ok(),
                Pool::Postgres(p) => on_server!(p, |c| sqlx::query(EXISTS).fetch_optional(c)).is_ok(),
                Pool::MySql(p) => on_server!(p, |c| sqlx::query(EXISTS).fetch_optional(c)).is_ok(),
            }
        };
        if exists().await {
            return Ok(());
        }
        let created = match &self.pool {
            Pool::Sqlite(p) => bounded(sqlx::query(TEXT_KEY).execute(p)).await.map(drop),
            Pool::Postgres(p) => on_server!(p, |c| sqlx::query(TEXT_KEY).execute(c)).map(drop),
            Pool::MySql(p) => on_server!(p, |c| sqlx::query(VARCHAR_KEY).execute(c)).map(drop),
        };
        match created {
            Ok(()) => Ok(()),
            // Balancers starting together race to create it: one that exists now is success.
            Err(_) if exists().await => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Logs an invalid row the first time it is seen.
    fn warn_invalid(&self, row: &str, error: &dyn std::fmt::Display) {
        let mut warned = self.warned_rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if warned.len() < MAX_WARNED_ROWS && warned.insert(row.to_owned()) {
            warn!(row = ?row, %error, "ignoring a stored node that is not a node address");
        }
    }
}

/// Pool settings for PostgreSQL and MySQL: small, bounded waits, and every idle connection
/// tested before use with a bounded ping (sqlx's own test waits as long as the whole acquire):
/// a connection the network or a database restart killed, or one gone silent, is closed and
/// replaced within [`PING_TIMEOUT`] instead of failing the call. Connections are opened on
/// demand, so the pool refills by itself after an outage.
fn server_pool<DB: sqlx::Database>(o: sqlx::pool::PoolOptions<DB>) -> sqlx::pool::PoolOptions<DB> {
    o.max_connections(MAX_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(QUERY_TIMEOUT)
        .idle_timeout(IDLE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, _meta| {
            Box::pin(async move { Ok(matches!(tokio::time::timeout(PING_TIMEOUT, conn.ping()).await, Ok(Ok(())))) })
        })
}

/// Opens and closes one connection, bounded.
async fn probe<C: Connection>(
    connect: impl std::future::Future<Output = Result<C, sqlx::Error>>,
) -> Result<(), String> {
    match tokio::time::timeout(QUERY_TIMEOUT, connect).await {
        Ok(Ok(conn)) => {
            let _ = tokio::time::timeout(QUERY_TIMEOUT, conn.close()).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {QUERY_TIMEOUT:?}")),
    }
}

/// The outcome of a statement on a server connection; a connection that may be broken is closed.
fn settle<DB: sqlx::Database, T>(
    pooled: PoolConnection<DB>,
    result: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
) -> Result<T, StoreError> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if broken(&e) {
                drop(pooled.detach());
            }
            Err(StoreError::Unavailable(e.to_string()))
        }
        Err(_) => {
            drop(pooled.detach());
            Err(StoreError::Unavailable(format!("no answer within {QUERY_TIMEOUT:?}")))
        }
    }
}

/// Whether an error leaves the connection unusable (the server did not answer properly), as
/// opposed to the server refusing the statement.
fn broken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed)
}

fn no_connection() -> StoreError {
    StoreError::Unavailable(format!("no database connection within {QUERY_TIMEOUT:?}"))
}

async fn bounded<T>(f: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, StoreError> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable(format!("no answer within {QUERY_TIMEOUT:?}"))),
    }
}

/// The root cause alone: sqlx nests configuration errors ("error with configuration: error with
/// configuration: unknown value ...").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
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
            let rows = self.list_rows().await?;
            let mut nodes = Vec::with_capacity(rows.len());
            for row in rows.into_iter().flatten() {
                match NodeAddr::parse(&row) {
                    Ok(a) => nodes.push(a),
                    Err(error) => self.warn_invalid(&row, &error),
                }
            }
            Ok(nodes)
        })
    }

    fn add<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.insert(node.as_str()))
    }

    fn remove<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete(node.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_url_accepts_the_documented_forms() {
        for s in [
            "postgres://user:pw@db.example:5432/fn?sslmode=disable",
            "postgresql://user@db.example/fn?sslmode=prefer&application_name=lb1&connect_timeout=5",
            "mysql://user:pw@tcp(db.example:3306)/fn?parseTime=true&tls=false",
            "mysql://user:pw@db.example:3306/fn?ssl-mode=DISABLED",
            "sqlite3://:memory:",
        ] {
            let db = DbUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"));
            assert_eq!(check_url(&db), Ok(()), "{s}");
        }
    }

    #[test]
    fn check_url_rejects_bad_options_without_the_password() {
        for s in [
            "postgres://user:s3cretpw@db.example/fn?sslmode=banana",
            "mysql://user:s3cretpw@db.example/fn?ssl-mode=banana",
        ] {
            let db = DbUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"));
            let err = check_url(&db).unwrap_err();
            assert!(err.contains("banana"), "{err}");
            assert!(!err.contains("s3cretpw"), "{err}");
        }
    }
}
