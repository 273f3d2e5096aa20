//! fnlb: a load balancer for clusters of Fn servers.
//!
//! Start reading at [`app`]: it wires the pieces together. A request enters in [`server`], is
//! answered by [`mgmt`] or forwarded by [`proxy`], which asks [`route`] for a node from the current
//! [`node::Snapshot`]. Nodes come from [`discovery`] (a store or Kubernetes) and their health from
//! [`health`]; one task, [`node::manager`], owns that state and publishes snapshots.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
pub mod node;
pub mod route;
