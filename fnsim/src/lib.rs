//! fnsim: simulated Fn servers, for testing and benchmarking load balancers.
//!
//! - [`model`] — one node's containers and queue as a pure state machine.
//! - [`server`] — the HTTP shell that hosts many simulated nodes in one process.
//! - [`godur`] — Go `time.Duration` formatting/parsing for the `XXX-FXLB-WAIT` header.
//! - [`body`] — response bodies (short text or large static filler).
//! - [`trace`] — the seeded FaaS workload (BENCHMARKS.md §2) and its variants.
//! - [`azure`] — the replay of the Azure Functions 2019 trace subset.
//! - [`bound`] — the cold-start lower bound of a trace.
//! - [`drive`] — open-loop replay of a trace against balancers, and the report.
//! - [`metrics`] — percentiles.
//!
//! fnsim deliberately does not depend on fnlb: it plays the outside world, so the same binary can
//! sit behind nginx or HAProxy.

pub mod azure;
pub mod body;
pub mod bound;
pub mod drive;
pub mod godur;
pub mod metrics;
pub mod model;
pub mod server;
pub mod trace;

pub use model::{NodeModel, NodeStats, QueueMode};
pub use server::{serve, Mode, NodeConfig, ServeConfig, ServerHandle};
