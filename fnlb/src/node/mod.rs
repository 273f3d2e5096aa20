//! Nodes: validated addresses, and the immutable snapshot of the node set that routing reads.
pub mod addr;
pub use addr::{AddrError, NodeAddr};
