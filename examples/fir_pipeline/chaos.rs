//! `--chaos`: the embedded model server stops for 20 s every 45 s
//! (`FIR_CHAOS_UP`, `FIR_CHAOS_DOWN`).

use std::time::Duration;

use crate::upstreams::StandIn;

/// Stops and restarts `model_server` in a loop, for as long as the process
/// runs.
pub(crate) fn start(model_server: Option<StandIn>, up: Duration, down: Duration) {
    let Some(stand_in) = model_server else {
        tracing::warn!("--chaos needs the embedded model server (MODEL_SERVER_URL is set)");
        return;
    };
    tracing::warn!(
        "chaos: the embedded model server stops for {} s every {} s",
        down.as_secs_f64(),
        (up + down).as_secs_f64()
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(up).await;
            tracing::warn!("chaos: stopping the model server");
            stand_in.stop();
            tokio::time::sleep(down).await;
            tracing::warn!("chaos: starting the model server again");
            if let Err(e) = stand_in.restart().await {
                tracing::error!("chaos: restart failed: {e}");
            }
        }
    });
}
