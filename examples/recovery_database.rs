//! Recovery of a database behind an sqlx pool. Run with
//! `cargo run --example recovery_database`.
//!
//! The action is the seed's `recover_database`: take a fresh connection from
//! the pool and run `SELECT 1`. Queries go through `Recovery::call`, which
//! counts consecutive failures and triggers recovery after three (the seed's
//! database had no breaker; `recovery.layer()` does the same for a Tower
//! client).
//!
//! To make a real failure with SQLite, the pool points at a database file
//! that does not exist yet and is opened without `create`: every connection
//! fails until the example creates the file, after which the next recovery
//! attempt succeeds. Set `DATABASE_URL` to a `mysql://` URL to use MySQL or
//! MariaDB instead (stop and start the server to watch it recover).

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tower::BoxError;
use tower_recovery::recovery::{Backoff, Recovery, RecoveryState};

async fn select_one(pool: AnyPool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_target(false).init();
    sqlx::any::install_default_drivers();

    let dir = std::env::temp_dir().join(format!("tower-recovery-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("fir.db");
    let _ = std::fs::remove_file(&file);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}?mode=rw", file.display()));
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&url)?;

    let recovery = Recovery::builder("database", {
        let pool = pool.clone();
        move || {
            tracing::info!("Attempting to recover database connection...");
            select_one(pool.clone())
        }
    })
    .max_attempts(6)
    .backoff(Backoff::new(Duration::from_millis(250), 2.0))
    .spawn();

    // The query path: three consecutive failures trigger recovery.
    for i in 1..=3 {
        let result = recovery.call(sqlx::query("SELECT 1").execute(&pool)).await;
        println!(
            "query {i}: {}",
            if result.is_ok() {
                "ok".to_string()
            } else {
                format!("{:?}", result.err())
            }
        );
    }
    println!("recovery is {}", recovery.status().state);

    if url.starts_with("sqlite:") {
        // The database comes back: create the file.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let create = format!("sqlite://{}?mode=rwc", file.display());
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&create)
            .await?;
        pool.close().await;
        println!("database file created");
    }

    tokio::time::timeout(Duration::from_secs(30), recovery.wait_idle_or_cooling()).await?;
    let status = recovery.status();
    println!("recovery: {status:?}");
    let result = recovery.call(sqlx::query("SELECT 1").execute(&pool)).await;
    println!(
        "query after recovery: {}",
        if result.is_ok() { "ok" } else { "failed" }
    );
    let _ = std::fs::remove_dir_all(&dir);
    if status.state == RecoveryState::CoolingDown && result.is_ok() {
        Ok(())
    } else {
        Err("database did not recover".into())
    }
}
