//! The database: an sqlx `AnyPool` over SQLite (the default) or
//! MySQL/MariaDB, the schema, the FIR queries, the recovery action, and
//! error text that names the real cause.
//!
//! # SQLite
//!
//! One connection, in WAL mode with `synchronous=NORMAL` and a 5 s busy
//! timeout: SQLite has one writer at a time, and connections competing for
//! it wait in SQLite's busy handler (sleeps of up to 100 ms), where one
//! connection queues them in the pool instead.
//!
//! # The real cause
//!
//! The pool retries a refused connection until `acquire_timeout` and then
//! reports only "pool timed out while waiting for an open connection". When
//! that happens, [`Database::explain`] opens one connection directly to
//! learn why ("connection refused"), at most once a second.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::LevelFilter;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Connection, Row};
use tower::BoxError;

use crate::describe::describe;
use crate::handlers::Fir;

/// How long a request waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the direct connection that explains a timeout may take.
const EXPLAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an explanation is reused.
const EXPLAIN_FOR: Duration = Duration::from_secs(1);

/// The pool and how to reach the database without it.
#[derive(Clone)]
pub(crate) struct Database {
    pool: AnyPool,
    options: AnyConnectOptions,
    /// The URL without its password.
    shown: Arc<str>,
    sqlite_file: Option<Arc<str>>,
    max_connections: u32,
    /// The last explanation of a pool timeout, and when it was made.
    explained: Arc<tokio::sync::Mutex<Option<(Instant, DbError)>>>,
}

impl Database {
    /// A lazy pool: nothing connects until the first query.
    pub(crate) fn connect(url: &str) -> Result<Self, BoxError> {
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(url)?
            .log_statements(LevelFilter::Debug)
            .log_slow_statements(LevelFilter::Warn, Duration::from_secs(2));
        let sqlite_file = sqlite_file(url).map(Arc::from);
        let sqlite = url.starts_with("sqlite:");
        let max_connections = if sqlite { 1 } else { 8 };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A SQLite connection is a file handle: nothing to test.
            .test_before_acquire(!sqlite)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        for pragma in [
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            shown: redact_url(url).into(),
            sqlite_file,
            max_connections,
            explained: Arc::default(),
        })
    }

    /// The URL in use, without its password.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Where the SQLite database lives, if it is one.
    pub(crate) fn sqlite_file(&self) -> Option<&str> {
        self.sqlite_file.as_deref()
    }

    pub(crate) async fn ensure_schema(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS firs (
                id VARCHAR(40) PRIMARY KEY,
                complaint TEXT NOT NULL,
                draft TEXT NOT NULL,
                created_at VARCHAR(40) NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn insert(&self, fir: &Fir) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO firs (id, complaint, draft, created_at) VALUES (?, ?, ?, ?)")
            .bind(&fir.id)
            .bind(&fir.complaint)
            .bind(&fir.draft)
            .bind(&fir.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn find(&self, id: &str) -> Result<Option<AnyRow>, sqlx::Error> {
        sqlx::query("SELECT id, complaint, draft, created_at FROM firs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
    }

    /// The health check: `SELECT 1` through the pool.
    pub(crate) async fn check(&self) -> Result<(), String> {
        match sqlx::query("SELECT 1").execute(&self.pool).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.explain(e).await.to_string()),
        }
    }

    /// The recovery action: a fresh connection (not the pool's) and
    /// `SELECT 1`.
    pub(crate) async fn recover(&self) -> Result<(), String> {
        tracing::info!("Attempting to recover database connection...");
        let result = async {
            let mut conn = AnyConnection::connect_with(&self.options)
                .await
                .map_err(|e| self.connect_error(&e))?;
            let selected = sqlx::query("SELECT 1").execute(&mut conn).await;
            let _ = conn.close().await;
            selected.map(|_| ()).map_err(|e| self.error(&e))
        }
        .await
        .map_err(|e| e.to_string());
        match &result {
            Ok(()) => tracing::info!("Database connection recovered"),
            Err(e) => tracing::error!("Database recovery failed: {e}"),
        }
        result
    }

    /// `error` with its cause: a pool timeout is explained by a direct
    /// connection attempt (reused for a second, so a burst of failing
    /// requests makes one attempt).
    pub(crate) async fn explain(&self, error: sqlx::Error) -> DbError {
        if !matches!(error, sqlx::Error::PoolTimedOut) {
            return self.error(&error);
        }
        // One explanation at a time; requests that find one under way use
        // the last one known, or the error as it is, rather than queue
        // behind a connection attempt.
        let Ok(mut explained) = self.explained.try_lock() else {
            return self.error(&error);
        };
        if let Some((at, known)) = &*explained {
            if at.elapsed() < EXPLAIN_FOR {
                return known.clone();
            }
        }
        let connect = AnyConnection::connect_with(&self.options);
        let known = match tokio::time::timeout(EXPLAIN_TIMEOUT, connect).await {
            Ok(Err(e)) => self.connect_error(&e),
            Err(_) => DbError {
                connect: true,
                cause: format!("no answer within {} s", EXPLAIN_TIMEOUT.as_secs()),
                url: self.shown.clone(),
            },
            Ok(Ok(conn)) => {
                let _ = tokio::time::timeout(EXPLAIN_TIMEOUT, conn.close()).await;
                DbError {
                    connect: false,
                    cause: format!(
                        "{} (the database accepts connections: the pool of {} is busy)",
                        describe(&error),
                        self.max_connections
                    ),
                    url: self.shown.clone(),
                }
            }
        };
        *explained = Some((Instant::now(), known.clone()));
        known
    }

    fn connect_error(&self, error: &sqlx::Error) -> DbError {
        let cause = match error {
            sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_string()
            }
            other => describe(other),
        };
        DbError {
            connect: true,
            cause,
            url: self.shown.clone(),
        }
    }

    fn error(&self, error: &sqlx::Error) -> DbError {
        DbError {
            connect: false,
            cause: describe(error),
            url: self.shown.clone(),
        }
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database error: `Display` names the URL (without password) for the
/// log and the health output; [`DbError::cause`] leaves it out for API
/// answers.
#[derive(Clone, Debug)]
pub(crate) struct DbError {
    connect: bool,
    cause: String,
    url: Arc<str>,
}

impl DbError {
    pub(crate) fn cause(&self) -> &str {
        &self.cause
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.connect {
            write!(f, "cannot connect to {}: {}", self.url, self.cause)
        } else {
            write!(f, "{} ({})", self.cause, self.url)
        }
    }
}

/// Bytes a `TEXT` column holds on MySQL/MariaDB (SQLite's `TEXT` has no
/// limit short of its 1 GB string limit, beyond the 2 MiB request body
/// limit).
const MYSQL_TEXT_BYTES: u32 = 65_535;

/// A value too long for its column (SQLSTATE `22001`; MariaDB's `1406 Data
/// too long for column 'complaint' at row 1`): the caller's error.
pub(crate) struct TooLong {
    pub(crate) column: String,
    pub(crate) limit: u32,
}

impl TooLong {
    pub(crate) fn of(error: &sqlx::Error) -> Option<Self> {
        let db = error.as_database_error()?;
        if db.code().as_deref() != Some("22001") {
            return None;
        }
        // Every text column of `firs` that a caller fills is `TEXT`.
        let column = db
            .message()
            .split('\'')
            .nth(1)
            .unwrap_or("complaint")
            .to_string();
        Some(Self {
            column,
            limit: MYSQL_TEXT_BYTES,
        })
    }
}

/// A row of `find`.
pub(crate) fn fir_from_row(row: &AnyRow) -> Result<Fir, sqlx::Error> {
    Ok(Fir {
        id: text(row, 0)?,
        complaint: text(row, 1)?,
        draft: text(row, 2)?,
        created_at: text(row, 3)?,
    })
}

/// A text column: MySQL reports TEXT to sqlx's Any driver as BLOB, so fall
/// back to bytes.
fn text(row: &AnyRow, index: usize) -> Result<String, sqlx::Error> {
    row.try_get::<String, _>(index).or_else(|_| {
        row.try_get::<Vec<u8>, _>(index)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    })
}

/// The file of a SQLite URL (`sqlite://path?mode=rwc` -> `path`).
fn sqlite_file(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = path.split('?').next().unwrap_or_default();
    Some(if path.is_empty() || path == ":memory:" {
        "(in memory)".to_string()
    } else {
        path.to_string()
    })
}

/// `url` without its password (`mysql://user:***@host/db`).
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; the userinfo at the
    // last '@' in it (a password may hold '@', as URL parsers read it).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..end].rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn the_password_is_hidden_whatever_it_holds() {
        assert_eq!(
            redact_url("mysql://root:p@ss@db:3306/fir"),
            "mysql://root:***@db:3306/fir"
        );
        assert_eq!(
            redact_url("mysql://root:s3cret@127.0.0.1/test"),
            "mysql://root:***@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact_url("sqlite:///tmp/a@b.db"), "sqlite:///tmp/a@b.db");
        assert_eq!(redact_url("no scheme"), "no scheme");
    }
}
