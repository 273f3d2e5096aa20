//! Routing decision cost: `cargo bench -p fnlb --bench route`.
//!
//! One decision = hash the path + the policy's pick over a snapshot (and its bookkeeping of the
//! answer). Measured at 8, 100 and 1,000 nodes and with 1,000 or 1,000,000 distinct functions,
//! to show it is flat in both.
//!
//! Each sample times 256 decisions: left to itself, divan timed single decisions on a busy
//! machine, where the timer's 20 ns precision and preemption swamped a ~50 ns decision.
use std::sync::Arc;

use fnlb::node::table::{key_hash, Table};
use fnlb::node::{Node, NodeAddr, Snapshot};
use fnlb::route::{policy_by_name, Balancers, Policy, PolicyConfig};

fn main() {
    divan::main();
}

fn snapshot(n: usize) -> Snapshot {
    let total = Arc::default();
    let mut addrs: Vec<NodeAddr> = (0..n)
        .map(|i| NodeAddr::parse(&format!("10.{}.{}.{}:8080", i / 62500, (i / 250) % 250, i % 250 + 1)).unwrap())
        .collect();
    addrs.sort();
    let nodes: Arc<[Arc<Node>]> = addrs.iter().map(|a| Node::new(a.clone(), Arc::clone(&total))).collect();
    Snapshot::new(nodes, Arc::new(Table::build(&addrs)), vec![true; n].into(), total)
}

fn keys(functions: usize) -> Vec<String> {
    // 4,096 sampled paths out of `functions` distinct ones. (All 4,096 are distinct whatever
    // `functions` is: i % 37 and i × 7919 % functions together tell every i < 4,096 apart.
    // Kept as it was measured; `bounded_pick_fitting` has a count the cluster can hold.)
    (0..4096).map(|i| format!("/r/app{}/fn{:07}", i % 37, (i * 7919) % functions)).collect()
}

/// Times one routing decision ([`decide`]) per iteration, cycling through sampled paths.
fn time_picks(bencher: divan::Bencher<'_, '_>, policy: &str, nodes: usize, functions: usize) {
    time_keys(bencher, policy, nodes, keys(functions));
}

fn time_keys(bencher: divan::Bencher<'_, '_>, policy: &str, nodes: usize, keys: Vec<String>) {
    let snap = snapshot(nodes);
    let policy = policy_by_name(
        policy,
        PolicyConfig { node_capacity: 64, balancers: Balancers::new(1), load_factor: 1.25, late_binding: false },
    )
    .unwrap();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & 4095;
        decide(&*policy, &snap, keys[i].as_bytes())
    });
}

/// One decision and its answer: the path's hash, the pick, and the policy's bookkeeping of the
/// node's answer (each call ends before the next: without answers, the default policy's estimate
/// of the nodes' containers would only grow).
fn decide(policy: &dyn Policy, snap: &Snapshot, key: &[u8]) -> Option<usize> {
    let hash = key_hash(key);
    let attempt = policy.pick(snap, hash, &[])?;
    let node = attempt.index();
    attempt.answered(None, http::StatusCode::OK);
    Some(node)
}

#[divan::bench(args = [8, 100, 1000], consts = [1_000, 1_000_000], sample_size = 256, sample_count = 400)]
fn bounded_pick<const FUNCTIONS: usize>(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    time_picks(bencher, "bounded", nodes, FUNCTIONS);
}

/// Functions the cluster can keep warm: `nodes` × 32 distinct paths (half its 64-container
/// slots), at most the 4,096 sampled. In [`bounded_pick`] the app prefix makes every one of the
/// 4,096 sampled paths distinct, whatever `FUNCTIONS` is: at 8 nodes (512 slots) each call is
/// then cold and takes a warmth entry from another pair, churn a cluster that can keep its
/// functions warm does not see.
#[divan::bench(args = [8, 100, 1000], sample_size = 256, sample_count = 400)]
fn bounded_pick_fitting(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    let functions = (nodes * 32).min(4096);
    let keys = (0..4096).map(|i| format!("/r/app{}/fn{:07}", i % functions % 37, i % functions)).collect();
    time_keys(bencher, "bounded", nodes, keys);
}

#[divan::bench(args = [8, 1000], sample_size = 256, sample_count = 400)]
fn ch_pick(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    time_picks(bencher, "ch", nodes, 1_000);
}

#[divan::bench(args = [8, 1000])]
fn table_build(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    let addrs: Vec<NodeAddr> =
        (0..nodes).map(|i| NodeAddr::parse(&format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)).unwrap()).collect();
    bencher.bench_local(|| Table::build(&addrs));
}

/// A loaded cluster: half the nodes (every other one) are over the load bound, so a pick walks
/// its key's order past full nodes, sometimes several deep, before it settles.
#[divan::bench(args = [8, 100, 1000], sample_size = 256, sample_count = 400)]
fn bounded_pick_half_full(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    let snap = snapshot(nodes);
    // Capacity 64 → floor 32; loads 60 and 20 make the mean 40 and the bound 50.
    let _calls: Vec<_> = snap
        .nodes()
        .iter()
        .enumerate()
        .flat_map(|(i, node)| (0..if i % 2 == 0 { 60 } else { 20 }).map(|_| node.start_call()).collect::<Vec<_>>())
        .collect();
    let policy = policy_by_name(
        "bounded",
        PolicyConfig { node_capacity: 64, balancers: Balancers::new(1), load_factor: 1.25, late_binding: false },
    )
    .unwrap();
    let keys = keys(1_000);
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) & 4095;
        decide(&*policy, &snap, keys[i].as_bytes())
    });
}

/// The literature's contenders, for comparison (pick + answer, 1,000 functions).
#[divan::bench(args = [8, 1000], consts = [0, 1, 2], sample_size = 256, sample_count = 200)]
fn literature_pick<const POLICY: usize>(bencher: divan::Bencher<'_, '_>, nodes: usize) {
    time_picks(bencher, ["openwhisk", "ch-rlu", "hermod"][POLICY], nodes, 1_000);
}
