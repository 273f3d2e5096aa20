//! Discovery: where the node set comes from. A [`Store`] (SQL table shared by balancers) is
//! polled every health-check interval and its list handed to the node manager as the desired
//! set; the management API writes to the store. Kubernetes mode publishes the set from a watch.
pub mod balancers;
pub mod db_url;
pub mod fnapi;
pub mod k8s;
pub mod sql;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tracing::{info, warn};

use crate::node::manager::NodesHandle;
use crate::node::NodeAddr;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The store cannot be reached or failed: the caller answers 503.
    #[error("node store unavailable: {0}")]
    Unavailable(String),
    /// Nodes come from elsewhere (Kubernetes); the caller answers 409.
    #[error("nodes are discovered from Kubernetes; add or remove pods instead")]
    ReadOnly,
}

/// The node list the management API edits and every balancer reads.
pub(crate) trait Store: Send + Sync + 'static {
    /// Every stored node. Rows that are not valid node addresses (the original accepted any
    /// string) are skipped, not fatal.
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeAddr>, StoreError>>;
    /// Adds a node; adding a present node is not an error.
    fn add<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Removes a node; removing an absent node is not an error.
    fn remove<'a>(&'a self, node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Re-reads the store every `interval` and hands the list to the manager. An outage is logged
/// once when it starts and once when it ends; routing keeps the last known list meanwhile.
pub(crate) async fn poll_store(store: std::sync::Arc<dyn Store>, nodes: NodesHandle, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = false;
    loop {
        tick.tick().await;
        let seq = nodes.mutation_seq();
        match store.list().await {
            Ok(list) => {
                if down {
                    info!("node store reachable again");
                    down = false;
                }
                nodes.set_desired(list, seq);
            }
            Err(error) => {
                if !down {
                    warn!(%error, "node store unreachable; routing with the last known nodes");
                    down = true;
                }
            }
        }
    }
}
