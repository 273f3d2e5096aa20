//! Balancers count themselves: how many share the nodes, for each one's share of a node
//! ([`route::Balancers`], read by the policies and the scale signal).
//!
//! - A shared SQL store: each balancer keeps a heartbeat row in `lb_balancers` (beside the
//!   original's `lb_nodes`, which stays as it was), written every `-hc-interval` and good for
//!   [`heartbeat_ttl`]; the count is the rows still good. Rows of balancers that were killed are
//!   not counted once expired, and deleted a minute later, at most
//!   100 per sweep. A clean shutdown deletes the own row.
//! - Kubernetes (`-db=k8s`): the Ready pods that `-balancer-selector` selects
//!   ([`super::k8s::K8sSource::count_balancers`]).
//! - `-balancers N` given: fixed, nothing counted.
//!
//! While the count cannot be read (database or API server away), the last count stays, logged
//! once per outage.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::sql::SqlStore;
use crate::route::Balancers;

/// Heartbeats between sweeps of old rows.
const SWEEP_EVERY: u32 = 20;

/// How long a heartbeat row stays good: three intervals and a second, so one late heartbeat
/// (a slow database, a busy machine) does not drop a balancer from the count.
pub(crate) fn heartbeat_ttl(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(1)
}

/// This balancer's heartbeat id: host, process and a random part, unique per run.
pub(crate) fn balancer_id() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
        .unwrap_or_else(|| "fnlb".into());
    let host: String = host.chars().take(200).collect();
    format!("{host}/{}/{:08x}", std::process::id(), rand::random::<u32>())
}

/// Writes the heartbeat every `interval` and sets `count` from the live rows, until `stop`
/// turns true; then deletes the own row. A heartbeat under way when `stop` comes is finished
/// first, so the delete is the last word.
pub(crate) async fn keep_heartbeat(
    store: Arc<SqlStore>,
    id: String,
    count: Balancers,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let ttl = heartbeat_ttl(interval);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut beats = 0u32;
    info!(id = %id, "counting balancers by heartbeats in the node store (table lb_balancers)");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        match store.heartbeat(&id, ttl).await {
            Ok(n) => {
                if failing {
                    info!(balancers = n, "balancer heartbeats work again");
                    failing = false;
                }
                let before = count.get();
                if n != before {
                    info!(balancers = n, before, "balancers sharing the nodes");
                }
                count.set(n);
            }
            Err(error) => {
                if !failing {
                    warn!(%error, balancers = count.get(), "cannot write the balancer heartbeat; keeping the last count");
                    failing = true;
                }
            }
        }
        beats = beats.wrapping_add(1);
        if beats.is_multiple_of(SWEEP_EVERY) {
            // Best effort: the next sweep tries again.
            let _ = store.sweep_heartbeats().await;
        }
    }
    match store.leave(&id).await {
        Ok(()) => info!("balancer heartbeat removed"),
        Err(error) => warn!(%error, "cannot remove the balancer heartbeat; it expires by itself"),
    }
}
