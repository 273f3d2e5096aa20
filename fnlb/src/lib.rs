//! fnlb: a load balancer for clusters of Fn servers.
//!
//! Start reading at [`app`]: it wires the pieces together. A request enters in [`server`], is
//! answered by [`mgmt`] or forwarded by [`proxy`], which asks a [`route::Policy`] for a node of
//! the current [`node::Snapshot`]. Nodes come from [`discovery`] (a store, or Kubernetes) and
//! their health from [`health`]; one task, [`node::manager`], owns that state and publishes
//! snapshots.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod answer;
pub mod app;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod health;
pub mod metrics;
pub mod mgmt;
pub mod node;
// The request path (proxy, route, server): an `unwrap` there would take calls down with it.
#[cfg_attr(not(test), deny(clippy::unwrap_used))]
pub mod proxy;
#[cfg_attr(not(test), deny(clippy::unwrap_used))]
pub mod route;
#[cfg_attr(not(test), deny(clippy::unwrap_used))]
pub mod server;
pub mod stats;
pub mod telemetry;
pub mod tls;
