//! `--chaos`: a rehearsal on a schedule. The model server's chaos layer
//! fails every request this process sends it (the API's calls, health
//! checks and recovery probes alike) for 20 s every 45 s (`FIR_CHAOS_UP`,
//! `FIR_CHAOS_DOWN`), so the breaker opens, the recovery backs off and
//! fails, and everything comes back when the faults stop. The server
//! itself keeps running: the outage is injected, so `--chaos` works with a
//! real `MODEL_SERVER_URL` too.
//!
//! The same switch answers `POST /chaos/model_server` on the admin routes:
//! an operator can start other faults on a running demo (the schedule
//! replaces them at its next turn).

use std::time::Duration;

use tower_recovery::chaos::{Chaos, Faults};

/// The log line of each return, which the scenario test waits for.
pub(crate) const RETURN: &str = "chaos: faults off, the model server is reachable again";

/// Switches `model_server`'s faults on for `down` after every `up`, for as
/// long as the process runs.
pub(crate) fn start(model_server: &Chaos, up: Duration, down: Duration) {
    tracing::warn!(
        "chaos: the model server is unreachable (injected faults) for {} s every {} s",
        down.as_secs_f64(),
        (up + down).as_secs_f64()
    );
    let chaos = model_server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(up).await;
            tracing::warn!("chaos: the model server becomes unreachable");
            // The rehearsal's own end is a safety net: the schedule stops it.
            chaos.start(
                Faults::new()
                    .error_rate(1.0)
                    .duration(down + Duration::from_secs(1)),
            );
            tokio::time::sleep(down).await;
            chaos.stop();
            tracing::warn!("{RETURN}");
        }
    });
}
