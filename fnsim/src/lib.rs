//! fnsim: simulated Fn servers, for testing and benchmarking load balancers.
//!
//! - [`model`]: one node's containers and queue as a pure state machine.
//! - [`server`]: the HTTP shell that hosts many simulated nodes in one process.
//! - [`godur`]: Go `time.Duration` formatting/parsing for the `XXX-FXLB-WAIT` header.
//! - [`body`]: response bodies (short text or large static filler).
//!
//! fnsim deliberately does not depend on fnlb: it plays the outside world, so the same binary can
//! sit behind nginx or HAProxy.

pub mod body;
pub mod godur;
pub mod model;
pub mod server;

pub use model::{NodeModel, NodeStats, QueueMode};
pub use server::{serve, Mode, NodeConfig, ServeConfig, ServerHandle};
