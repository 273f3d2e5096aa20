//! Routing: the key of a request, the consistent order of nodes for a key, and the policies that
//! pick one node from a snapshot.
pub mod goduration;
