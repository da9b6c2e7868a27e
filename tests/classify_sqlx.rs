//! `classify::sqlx` against real drivers: SQLite files and connections,
//! MySQL connections refused. (MariaDB's own errors: `tests/fir_pipeline/
//! database.rs`, a complaint too long for its column.)
#![cfg(all(feature = "sqlx", feature = "recovery"))]

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, SqlitePool};
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::classify::Outcome;
use tower_recovery::classify::sqlx::{SqlxErrorsAsFailures, is_dependency_failure};
use tower_recovery::recovery::{Recovery, RecoveryState};

fn temp_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-recovery-classify-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("db.sqlite")
}

async fn table(pool: &SqlitePool) {
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        .execute(pool)
        .await
        .unwrap();
}

/// A breaker that opens at the first failure, and a recovery that starts
/// at the first failure.
fn strict() -> (Breaker, Recovery) {
    let breaker = Breaker::builder("database")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(60))
        .build();
    let recovery = Recovery::builder("database", || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, String>(())
    })
    .trigger_after(1)
    .spawn();
    (breaker, recovery)
}

#[tokio::test]
async fn the_callers_errors_open_nothing() {
    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    table(&pool).await;
    let classify = SqlxErrorsAsFailures::new();
    let (breaker, recovery) = strict();

    let calls: Vec<(&str, &str)> = vec![
        ("unique", "INSERT INTO t (id, v) VALUES (1, 'a')"),
        ("unique", "INSERT INTO t (id, v) VALUES (1, 'a')"),
        ("not null", "INSERT INTO t (id, v) VALUES (2, NULL)"),
        ("syntax", "INSERT INTO t (id, v) VALUS (3, 'c')"),
        ("no such table", "SELECT * FROM missing"),
    ];
    for (i, (what, sql)) in calls.iter().enumerate() {
        let result = breaker
            .call_with(
                &classify,
                recovery.call_with(&classify, sqlx::query(sql).execute(&pool)),
            )
            .await;
        match result {
            Ok(_) => assert_eq!(i, 0, "{what} succeeded"),
            Err(e) => {
                let e = e.into_inner().expect("not rejected");
                assert!(!is_dependency_failure(&e), "{what}: {e}");
                assert_eq!(classify.classify_error(&e), Outcome::Success, "{what}: {e}");
            }
        }
    }
    let row = sqlx::query_as::<_, (i64,)>("SELECT id FROM t WHERE id = 42")
        .fetch_one(&pool)
        .await
        .unwrap_err();
    assert!(!is_dependency_failure(&row), "{row}");

    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failures, 0);
    assert_eq!(recovery.status().state, RecoveryState::Idle);
}

#[tokio::test]
async fn a_busy_database_is_a_failure() {
    let file = temp_file("busy");
    let options = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true);
    let mut holder = options.clone().connect().await.unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .execute(&mut holder)
        .await
        .unwrap();
    // The writer's lock, held.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.busy_timeout(Duration::from_millis(50)))
        .await
        .unwrap();

    let classify = SqlxErrorsAsFailures::new();
    let (breaker, recovery) = strict();
    let err = breaker
        .call_with(
            &classify,
            recovery.call_with(
                &classify,
                sqlx::query("INSERT INTO t (id) VALUES (1)").execute(&pool),
            ),
        )
        .await
        .unwrap_err()
        .into_inner()
        .unwrap();
    assert!(is_dependency_failure(&err), "{err}");
    assert_eq!(breaker.state(), State::Open);
    assert_ne!(recovery.status().state, RecoveryState::Idle);

    holder.close().await.unwrap();
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test]
async fn a_database_that_cannot_be_opened_is_a_failure() {
    let err = SqliteConnectOptions::new()
        .filename("/nonexistent/tower-recovery/db.sqlite")
        .connect()
        .await
        .unwrap_err();
    assert!(is_dependency_failure(&err), "{err}");
}

#[tokio::test]
async fn a_refused_connection_is_a_failure_and_a_closed_pool_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = sqlx::MySqlConnection::connect(&format!("mysql://root@127.0.0.1:{port}/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert!(is_dependency_failure(&err), "{err}");

    let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    pool.close().await;
    let err = sqlx::query("SELECT 1").execute(&pool).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::PoolClosed), "{err}");
    assert!(!is_dependency_failure(&err));
    assert_eq!(
        SqlxErrorsAsFailures::new().classify_error(&err),
        Outcome::Ignore
    );
}
