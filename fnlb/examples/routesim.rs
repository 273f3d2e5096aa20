//! A deterministic, discrete-event replay of the routing benchmark (docs/BENCHMARKS.md §1):
//! fnsim's seeded trace and node model, fnlb's own policy code, and virtual time — no sockets,
//! no sleeping, so policies can be compared without the run-to-run noise of a shared machine
//! (a 40 s trace takes well under a second). bench/routing.py stays the reference; on the
//! same seed the two agree within a few per cent.
//!
//!     cargo run --release -p fnlb --example routesim -- --rho 0.45 --seeds 1,2,3 \
//!         --policies 'bounded;bounded:warm=0;ch;openwhisk;ch-rlu;hermod;oracle' [--variant steady|bursty|
//!         ramp|churn|multi-lb|overload|spike|many|azure] [--warmup 10] [--duration 30] [--windows 1]
//!         [--functions N]
//!     cargo run --release -p fnlb --example routesim -- --variant azure --rho 0.45 \
//!         --window 120:10 [--speed X] [--arrivals poisson|uniform] [--trace-dir DIR] --seeds 1-3
//!
//! Traces come from fnsim's `trace::build`, as `fnsim drive` makes them, so a scenario here is
//! the same calls as in `bench/routing.py`. Every row carries the trace's calls/s and mean
//! execution time; "> 60 s" counts calls that took longer than the driver's timeout (errors
//! live); for `spike` a line says when the cold-start ratio was back to its level before the
//! spike, for the policy and for the lower bound.
//!
//! Policies are fnlb's (`-policy` names: `route::POLICIES`, the literature's `openwhisk`,
//! `ch-rlu` and `hermod` included; `all` runs every one), `bounded:KNOB=V,...` (see `tuning`), or
//! `oracle`: a rule that sees the nodes' containers, as no balancer can (warm node first along
//! the key's order, else a node with a free slot, else home). `churn`: the node that sorts first
//! goes down (its containers lost) a third of the way through the measured window and comes back
//! at two thirds; the line "rejoin" says how many of the functions called after its return went
//! to it, against how many are homed there. Not modelled: network and proxy delays.
//!
//! `--late-binding 1` holds a call that finds every probe full at the balancer
//! (`fnlb::route::wait`): it is handed the node where a call of its function ends (warm), or a
//! node with a free slot after its cold deadline, or refused (counted as "refused") when it
//! cannot be placed in time; as live, it also turns on `bounded`'s `forget` (`bounded:forget=0`
//! turns it off). `--seed-stats 1-30` prints each seed's calls/s and mean execution
//! time, shortest first.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use fnlb::node::table::{key_hash, Table};
use fnlb::node::{InFlight, Node, NodeAddr, Snapshot};
use fnlb::route::bounded::{Bounded, Tuning};
use fnlb::route::wait::{Decision, Leave, WaitConfig, WaitQueue, WaitRule, Waiter};
use fnlb::route::{policy_by_name, Balancers, Placement, Policy, PolicyConfig};
use fnsim::azure::{self, Arrivals, AzureConfig};
use fnsim::metrics::spike_recovery;
use fnsim::model::{Arrival, Lease, NodeModel, QueueMode};
use fnsim::trace::{self, Trace, Variant, WorkloadConfig};
use tokio::time::Instant;

const NODES: usize = 8;
const SLOTS: usize = 64;
const IDLE: Duration = Duration::from_secs(30);

struct Lb {
    snap: Snapshot,
    policy: Box<dyn Policy>,
    /// `snap` with node 0 down, swapped with it while node 0 is away (`churn`).
    away: Snapshot,
    rule: WaitRule,
    queue: WaitQueue<usize>,
}

/// A rule that sees the nodes' containers (what no balancer can): along the key's order, the
/// first node where the function has an idle container (and fewer than 48 calls), else the first
/// with a free slot (nothing to evict) and calls to spare, else home.
fn oracle(snap: &Snapshot, models: &mut [NodeModel], now: Instant, key: &str, hash: u64) -> usize {
    let order: Vec<usize> = snap.table().order(hash).take(8).collect();
    for &i in &order {
        models[i].expire(now);
        let load = snap.nodes()[i].in_flight() as usize;
        if (models[i].has_idle(key) && load < 48) || (models[i].occupied() < SLOTS && load < SLOTS) {
            return i;
        }
    }
    order[0]
}

/// `bounded:` knobs, e.g. `bounded:warm=0` (the rule before the warmth table) or
/// `bounded:cap=1.1,coldbound=0`. `forget` starts as `-late-binding` sets it live.
fn tuning(spec: &str, late: bool) -> Tuning {
    let mut t = Tuning { forget: late, ..Tuning::default() };
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
        match k {
            "warm" => t.warm = v == "1",
            "cap" => t.cap_share = v.parse().unwrap(),
            "warmcap" => t.warm_share = v.parse().unwrap(),
            "coldbound" => t.cold_bound = v == "1",
            "floor" => t.floor_share = v.parse().unwrap(),
            "probes" => t.probes = v.parse().unwrap(),
            "entries" => t.entries = v.parse().unwrap(),
            "forget" => t.forget = v == "1",
            _ => panic!("unknown knob {k}"),
        }
    }
    t
}

fn lb(policy: &str, balancers: u32, late: bool) -> Lb {
    let total = Arc::new(AtomicU32::new(0));
    let mut addrs: Vec<NodeAddr> =
        (0..NODES).map(|i| NodeAddr::parse(&format!("127.0.0.1:{}", 19001 + i)).unwrap()).collect();
    addrs.sort();
    let nodes: Arc<[Arc<Node>]> = addrs.iter().map(|a| Node::new(a.clone(), Arc::clone(&total))).collect();
    let table = Arc::new(Table::build(&addrs));
    let mut healthy = vec![true; NODES];
    healthy[0] = false;
    let away = Snapshot::new(Arc::clone(&nodes), Arc::clone(&table), healthy.into(), Arc::clone(&total));
    let snap = Snapshot::new(nodes, table, vec![true; NODES].into(), total);
    let cfg = PolicyConfig {
        node_capacity: SLOTS as u32,
        balancers: Balancers::new(balancers),
        load_factor: 1.25,
        late_binding: late,
    };
    let wait = wait_config();
    let (rule, queue) = (WaitRule::new(wait).shared_by(Balancers::new(balancers)), WaitQueue::new(wait));
    if let Some(spec) = policy.strip_prefix("bounded:") {
        let t = tuning(spec, late);
        let policy = Box::new(Bounded::with_tuning(1.25, SLOTS as u32, balancers, t));
        return Lb { snap, policy, away, rule, queue };
    }
    let name = if policy == "oracle" { "ch" } else { policy };
    Lb { snap, policy: policy_by_name(name, cfg).expect("known policy"), away, rule, queue }
}

/// Late binding's knobs: a balancer's share of a node's slots; `FNLB_SIM_WAIT=min,max,give_up`
/// (ms) varies the deadlines for tuning.
fn wait_config() -> WaitConfig {
    let mut w = WaitConfig::new(SLOTS as u32);
    if let Ok(v) = std::env::var("FNLB_SIM_WAIT") {
        let ms: Vec<u64> = v.split(',').map(|x| x.parse().expect("FNLB_SIM_WAIT=min,max,give_up")).collect();
        (w.min_wait_ms, w.max_wait_ms, w.give_up_ms) = (ms[0], ms[1], ms[2]);
    }
    w
}

/// A call in the node's hands.
struct Running {
    call: usize,
    lb: usize,
    node: usize,
    guard: InFlight,
    /// Virtual ms the call reached the node.
    arrived: f64,
    /// How it was placed: 0 the policy, 1 cold at once, 2 at its deadline, 3 handed warm,
    /// 4 handed room, 5 the policy's room for a new container.
    why: usize,
}

enum Ev {
    Arrive(usize),
    Finish(u64),
    /// A waiting call's cold deadline or give-up time (balancer, ticket).
    Recheck(usize, u64),
}

/// Schedules an event (its index orders events at the same µs: first pushed, first served).
fn push(heap: &mut BinaryHeap<Reverse<(u64, u64, usize)>>, evs: &mut Vec<Option<Ev>>, t_ms: f64, ev: Ev) {
    evs.push(Some(ev));
    heap.push(Reverse(((t_ms * 1000.0) as u64, evs.len() as u64, evs.len() - 1)));
}

#[derive(Default, Debug, Clone)]
struct Report {
    calls: usize,
    cold: usize,
    bound: usize,
    excess: Vec<f64>,
    busy: Vec<f64>,
    evictions: u64,
    spilled: usize,
    /// Per 5 s of the trace: (calls, cold starts).
    windows: Vec<(usize, usize)>,
    /// `churn`: functions called from 5 s after node 0's return, and how many of them last went
    /// to node 0 and are homed there.
    rejoin: (usize, usize, usize),
    /// Calls that took longer than the driver's 60 s timeout (errors in a live run).
    late: usize,
    /// Spike only: (scheduled s, cold) per call.
    points: Vec<(f64, bool)>,
    /// Late binding: refused (503 + Retry-After), waited, handed warm / a node with room, went
    /// on at their deadline.
    refused: usize,
    waits: u64,
    handed_warm: u64,
    handed_room: u64,
    went_cold: u64,
    /// (calls, cold) by how they were placed (see `Running::why`).
    by_why: [(usize, usize); 6],
}

/// The driver's per-call timeout, from the scheduled time.
const TIMEOUT_MS: f64 = 60_000.0;

/// How the trace is chosen: the flags beside the policy list.
struct Scenario {
    variant: String,
    rho: f64,
    warmup: u64,
    duration: u64,
    functions: Option<usize>,
    azure: AzureConfig,
}

/// The trace of `sc` for `seed`, through fnsim's library (as `fnsim drive` builds it).
fn workload(sc: &Scenario, seed: u64) -> Trace {
    let variant = match sc.variant.as_str() {
        "multi-lb" => Variant::Steady,
        v => v.parse().unwrap_or_else(|e| panic!("{e}")),
    };
    let cfg = WorkloadConfig {
        seed,
        variant,
        rho: sc.rho,
        nodes: NODES,
        slots: SLOTS,
        functions: sc.functions.unwrap_or(variant.default_functions()),
        warmup: Duration::from_secs(sc.warmup),
        measured: Duration::from_secs(sc.duration),
        azure: sc.azure.clone(),
        ..WorkloadConfig::default()
    };
    trace::build(&cfg).unwrap_or_else(|e| panic!("trace: {e}"))
}

/// `1,2,3` or `1-30` (or both: `1-3,7`).
fn seeds(v: &str) -> Vec<u64> {
    v.split(',')
        .flat_map(|s| match s.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<u64>>(),
            None => vec![s.parse().unwrap()],
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn run(policy: &str, variant: &str, tr: &Trace, late: bool) -> Report {
    // The oracle sees the nodes' containers and places every call itself: nothing waits.
    let late = late && policy != "oracle";
    let seed = tr.config.seed;
    let warmup = tr.config.warmup.as_secs_f64();
    let duration = tr.config.measured.as_secs_f64();
    let n_lbs = if variant == "multi-lb" { 3 } else { 1 };
    let mut lbs: Vec<Lb> = (0..n_lbs).map(|_| lb(policy, n_lbs as u32, late)).collect();
    // churn: node 0 away for the middle third of the measured window (ms of the trace).
    let away_ms = if variant == "churn" {
        let third = duration * 1000.0 / 3.0;
        (warmup * 1000.0 + third, warmup * 1000.0 + 2.0 * third)
    } else {
        (f64::MAX, f64::MAX)
    };
    let mut away = false;
    let mut last_node: HashMap<u32, usize> = HashMap::new();
    let base = Instant::now();
    let at = |ms: f64| base + Duration::from_secs_f64(ms / 1000.0);
    let mut models: Vec<NodeModel> = (0..NODES).map(|_| NodeModel::new(SLOTS, IDLE, QueueMode::Queue)).collect();
    let keys: Vec<(String, u64)> = tr.functions.iter().map(|f| (f.path.clone(), key_hash(f.path.as_bytes()))).collect();
    let mut heap: BinaryHeap<Reverse<(u64, u64, usize)>> = BinaryHeap::new(); // (time µs, seq, ev index)
    let mut evs: Vec<Option<Ev>> = Vec::new();
    for (i, c) in tr.calls.iter().enumerate() {
        push(&mut heap, &mut evs, c.at.as_secs_f64() * 1000.0, Ev::Arrive(i));
    }
    let mut running: HashMap<u64, (Running, Lease)> = HashMap::new();
    let mut queued: HashMap<(usize, u64), Running> = HashMap::new();
    // Late binding: calls waiting at a balancer, by (balancer, ticket): the call, its waiter,
    // its give-up time (virtual ms).
    let mut waiting: HashMap<(usize, u64), (usize, Waiter<usize>, u64)> = HashMap::new();
    // Calls placed on a node by this event, to send there: (call, balancer, node, counted by
    // the policy already, why).
    let mut to_send: Vec<(usize, usize, usize, bool, usize)> = Vec::new();
    // Per function: calls, cold starts, sum of excess (FNLB_SIM_DIAG=1 prints the worst).
    let mut diag: HashMap<u32, (usize, usize, f64)> = HashMap::new();
    let mut next_id = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    // FNLB_SIM_ROOM_WAIT=0: a call with room for a cold start never waits (for comparison).
    let room_wait: u32 = std::env::var("FNLB_SIM_ROOM_WAIT").map_or(1, |v| v.parse().unwrap());
    let mut rep = Report { busy: vec![0.0; NODES], ..Default::default() };
    let warm_ms = tr.config.warmup.as_secs_f64() * 1000.0;
    let spike = tr.spike_window().is_some();
    let mut start = |running: &mut HashMap<u64, (Running, Lease)>,
                     heap: &mut BinaryHeap<_>,
                     evs: &mut Vec<Option<Ev>>,
                     now: f64,
                     r: Running,
                     lease: Lease| {
        let c = &tr.calls[r.call];
        let end = now + if lease.cold { c.cold_ms } else { 0.0 } + c.exec_ms;
        next_id += 1;
        running.insert(next_id, (r, lease));
        push(heap, evs, end, Ev::Finish(next_id));
    };
    while let Some(Reverse((t_us, _, ei))) = heap.pop() {
        let now = t_us as f64 / 1000.0;
        let now_ms = now as u64 + 1;
        fnlb::clock::set_virtual_ms(now_ms);
        if away != (now >= away_ms.0 && now < away_ms.1) {
            away = !away;
            for l in &mut lbs {
                std::mem::swap(&mut l.snap, &mut l.away);
            }
            if away {
                // The node restarts: its containers are gone.
                models[0].reset();
            }
        }
        match evs[ei].take().unwrap() {
            Ev::Arrive(ci) if late => {
                let c = &tr.calls[ci];
                let hash = keys[c.func as usize].1;
                let l = if n_lbs == 1 {
                    0
                } else {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % n_lbs as u64) as usize
                };
                let lbr = &lbs[l];
                match lbr.policy.place(&lbr.snap, hash, &[]).expect("a node") {
                    Placement::Go(i) => to_send.push((ci, l, i, false, 0)),
                    Placement::Room(i) if room_wait == 0 => to_send.push((ci, l, i, false, 5)),
                    placement => {
                        let view = lbr.queue.view(hash);
                        match lbr.rule.decide(&lbr.snap, lbr.policy.warmth(), hash, placement, view, now_ms) {
                            Decision::Cold(i) => {
                                let room = matches!(placement, Placement::Room(_));
                                to_send.push((ci, l, i, false, if room { 5 } else { 1 }));
                            }
                            Decision::Refuse { .. } => rep.refused += 1,
                            Decision::Wait { cold_at_ms, give_up_ms } => {
                                match lbr.queue.enqueue(hash, now_ms, cold_at_ms) {
                                    Ok(w) => {
                                        let at = if cold_at_ms > now_ms { cold_at_ms } else { give_up_ms };
                                        push(&mut heap, &mut evs, (at - 1) as f64, Ev::Recheck(l, w.ticket()));
                                        waiting.insert((l, w.ticket()), (ci, w, give_up_ms));
                                    }
                                    Err(_) => rep.refused += 1,
                                }
                            }
                        }
                    }
                }
            }
            Ev::Recheck(l, ticket) => {
                let Some(&(ci, _, give_up_ms)) = waiting.get(&(l, ticket)) else {
                    continue; // handed a node before its deadline
                };
                let lbr = &lbs[l];
                let hash = keys[tr.calls[ci].func as usize].1;
                let decision = match lbr.policy.place(&lbr.snap, hash, &[]).expect("a node") {
                    Placement::Go(i) | Placement::Room(i) => Decision::Cold(i),
                    Placement::Full(best) => lbr.rule.at_deadline(&lbr.snap, best, give_up_ms, now_ms),
                };
                match decision {
                    Decision::Cold(i) => {
                        let (_, w, _) = waiting.remove(&(l, ticket)).unwrap();
                        let node = w.leave(Leave::Cold, now_ms).map_or(i, |h| h.node);
                        to_send.push((ci, l, node, false, 2));
                    }
                    Decision::Refuse { .. } => {
                        let (_, w, _) = waiting.remove(&(l, ticket)).unwrap();
                        assert!(w.leave(Leave::GaveUp, now_ms).is_none());
                        rep.refused += 1;
                    }
                    Decision::Wait { give_up_ms, .. } => {
                        push(&mut heap, &mut evs, (give_up_ms - 1) as f64, Ev::Recheck(l, ticket));
                    }
                }
            }
            Ev::Arrive(ci) => {
                let c = &tr.calls[ci];
                let (key, hash) = &keys[c.func as usize];
                let l = if n_lbs == 1 {
                    0
                } else {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % n_lbs as u64) as usize
                };
                let lbr = &lbs[l];
                let node = if policy == "oracle" {
                    oracle(&lbr.snap, &mut models, at(now), key, *hash)
                } else {
                    lbr.policy.choose(&lbr.snap, *hash, &[]).expect("a node")
                };
                to_send.push((ci, l, node, true, 0));
            }
            Ev::Finish(id) => {
                let (r, lease) = running.remove(&id).unwrap();
                let c = &tr.calls[r.call];
                let cold = lease.cold;
                let started = lease.started;
                for (ticket, l2) in models[r.node].finish(at(now), lease) {
                    let q = queued.remove(&(r.node, ticket)).unwrap();
                    start(&mut running, &mut heap, &mut evs, now, q, l2);
                }
                let start_ms = started.duration_since(base).as_secs_f64() * 1000.0;
                let wait = start_ms - r.arrived + if cold { c.cold_ms } else { 0.0 };
                let wait = Duration::from_secs_f64(wait.max(0.0) / 1000.0);
                rep.busy[r.node] += now - start_ms;
                let lbr = &lbs[r.lb];
                let node = &lbr.snap.nodes()[r.node];
                node.observe_wait(wait);
                lbr.policy.observe(node, keys[c.func as usize].1, Some(wait), http::StatusCode::OK);
                drop(r.guard);
                if late {
                    lbr.rule.observe_wait(keys[c.func as usize].1, wait);
                    // What the proxy sees: the answer's time since dispatch less the wait.
                    let ran = (now - r.arrived - wait.as_secs_f64() * 1000.0).max(0.0);
                    lbr.rule.observe_exec(keys[c.func as usize].1, Duration::from_secs_f64(ran / 1000.0));
                    // A slot is free there (no call of this balancer queues on the node): the
                    // container just idled goes to a waiter of its function, else the slot to
                    // the oldest waiter past its cold deadline.
                    if lbr.rule.has_slot(&lbr.snap, r.node) {
                        let hash = keys[c.func as usize].1;
                        let handed =
                            lbr.queue.on_call_end(hash, &r.node, now_ms).or_else(|| lbr.queue.on_room(&r.node, now_ms));
                        if let Some(t) = handed {
                            let (ci, mut w, _) = waiting.remove(&(r.lb, t)).unwrap();
                            let h = w.try_handed().expect("handed");
                            to_send.push((ci, r.lb, h.node, false, if h.warm { 3 } else { 4 }));
                        }
                    }
                }
                rep.calls += 1;
                let w = (c.at.as_secs_f64() / 5.0) as usize;
                if rep.windows.len() <= w {
                    rep.windows.resize(w + 1, (0, 0));
                }
                rep.windows[w].0 += 1;
                if cold {
                    rep.cold += 1;
                    rep.windows[w].1 += 1;
                }
                if spike {
                    rep.points.push((c.at.as_secs_f64(), cold));
                }
                rep.by_why[r.why].0 += 1;
                rep.by_why[r.why].1 += usize::from(cold);
                let d = diag.entry(c.func).or_insert((0, 0, 0.0));
                d.0 += 1;
                d.1 += usize::from(cold);
                d.2 += now - c.at.as_secs_f64() * 1000.0 - c.exec_ms;
                let sched = c.at.as_secs_f64() * 1000.0;
                rep.late += usize::from(now - sched > TIMEOUT_MS);
                if sched >= warm_ms {
                    rep.excess.push(now - sched - c.exec_ms);
                }
            }
        }
        for (ci, l, node, counted, why) in to_send.drain(..) {
            let lbr = &lbs[l];
            let (key, hash) = &keys[tr.calls[ci].func as usize];
            if !counted {
                lbr.policy.commit(&lbr.snap, *hash, node);
            }
            if Some(node) != lbr.snap.table().home(*hash) {
                rep.spilled += 1;
            }
            if now >= away_ms.1 + 5000.0 {
                last_node.insert(tr.calls[ci].func, node);
            }
            let guard = lbr.snap.nodes()[node].start_call();
            let r = Running { call: ci, lb: l, node, guard, arrived: now, why };
            match models[node].arrive(at(now), key) {
                Arrival::Start(lease) => start(&mut running, &mut heap, &mut evs, now, r, lease),
                Arrival::Queued(ticket) => {
                    queued.insert((node, ticket), r);
                }
                Arrival::Rejected => unreachable!(),
            }
        }
    }
    assert!(waiting.is_empty(), "every waiting call was placed or refused");
    if std::env::var("FNLB_SIM_DIAG").is_ok() {
        let mut v: Vec<_> = diag.into_iter().collect();
        v.sort_by_key(|(_, d)| Reverse(d.1));
        println!("  (calls, cold) placed by policy (warm) / cold at once / deadline / handed warm / handed room / policy's room: {:?}", rep.by_why);
        for (f, (n, cold, ex)) in v.into_iter().take(8) {
            let fun = &tr.functions[f as usize];
            println!(
                "  fn {f}: pop {:.3} exec {:.0} ms cold {:.0} ms: {n} calls, {cold} cold, mean excess {:.0} ms",
                fun.popularity,
                fun.exec_ms,
                fun.cold_ms,
                ex / n as f64
            );
        }
    }
    for lbr in &lbs {
        let s = lbr.queue.stats();
        use std::sync::atomic::Ordering::Relaxed;
        rep.waits += s.waits.load(Relaxed);
        rep.handed_warm += s.handed_warm.load(Relaxed);
        rep.handed_room += s.handed_room.load(Relaxed);
        rep.went_cold += s.went_cold.load(Relaxed);
    }
    for m in &mut models {
        rep.evictions += m.stats(at(1e9)).evictions;
    }
    rep.bound = fnsim::bound::cold_starts(&tr.calls, IDLE);
    let homed = |f: &u32| lbs[0].snap.table().home(keys[*f as usize].1) == Some(0);
    rep.rejoin = (
        last_node.len(),
        last_node.values().filter(|n| **n == 0).count(),
        last_node.keys().filter(|f| homed(f)).count(),
    );
    rep
}

fn main() {
    let mut rho = None;
    let mut seed_list = vec![1u64];
    let mut policies = vec!["bounded".to_string()];
    let mut sep = ';';
    let mut windows = false;
    let mut variant = "steady".to_string();
    let (mut warmup, mut duration) = (10u64, 30u64);
    let mut functions = None;
    let mut az = AzureConfig::default();
    let mut late = false;
    let mut seed_stats: Option<Vec<u64>> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    for w in args.chunks(2) {
        let v = &w[1];
        match w[0].as_str() {
            "--rho" => rho = Some(v.parse().unwrap()),
            "--seeds" => seed_list = seeds(v),
            "--functions" => functions = Some(v.parse().unwrap()),
            "--window" => (az.start_minute, az.minutes) = azure::parse_window(v).unwrap(),
            "--speed" => az.speed = Some(v.parse().unwrap()),
            "--trace-dir" => az.trace_dir = v.into(),
            "--arrivals" => az.arrivals = if v == "uniform" { Arrivals::Uniform } else { Arrivals::Poisson },
            "--windows" => windows = v == "1",
            "--sep" => sep = v.chars().next().unwrap(),
            "--policies" if v == "all" => {
                policies = fnlb::route::POLICIES.iter().map(std::string::ToString::to_string).collect();
            }
            "--policies" => policies = v.split(sep).map(String::from).collect(),
            "--variant" => variant = v.clone(),
            "--warmup" => warmup = v.parse().unwrap(),
            "--duration" => duration = v.parse().unwrap(),
            "--late-binding" => late = v == "1",
            "--seed-stats" => seed_stats = Some(seeds(v)),
            a => panic!("unknown flag {a}"),
        }
    }
    let rho = rho.unwrap_or_else(|| variant.parse::<Variant>().map_or(0.3, Variant::default_rho));
    let sc = Scenario { variant: variant.clone(), rho, warmup, duration, functions, azure: az };
    if let Some(list) = seed_stats {
        let short = Scenario { warmup: 0, duration: 1, ..sc };
        let mut rows: Vec<(f64, u64, f64)> = list
            .into_iter()
            .map(|seed| {
                let tr = workload(&short, seed);
                (tr.mean_exec_ms, seed, tr.rate)
            })
            .collect();
        rows.sort_by(|x, y| x.0.total_cmp(&y.0));
        println!("| seed | mean exec ms | calls/s at rho {rho} |");
        for (exec, seed, rate) in rows {
            println!("| {seed} | {exec:.0} | {rate:.0} |");
        }
        return;
    }
    // One trace in memory at a time (an Azure window can be millions of calls): built per row.
    let first = workload(&sc, seed_list[0]);
    if let Some(a) = first.azure.as_ref() {
        println!(
            "azure window {}:{} of {}, speed {:.3} ({:.1} s a trace minute), {:?} arrivals, {} executions clipped",
            a.start_minute, a.minutes, a.trace_dir, a.speed, a.minute_s, a.arrivals, a.clipped
        );
        let t = &first;
        let (w, m) = (t.config.warmup.as_secs_f64(), t.config.measured.as_secs_f64());
        println!("{variant} rho {rho} seeds {seed_list:?} {w:.0}s+{m:.0}s");
    } else {
        println!("{variant} rho {rho} seeds {seed_list:?} {warmup}s+{duration}s late-binding {late}");
    }
    drop(first);
    println!("| policy | seed | calls/s | E[exec] ms | cold % | x bound | excess p50 | p99 | p99.9 | busy max/mean | evictions | spilled % | > 60 s | refused | waited: warm / room / deadline |");
    for p in &policies {
        let mut xs = Vec::new();
        for &seed in &seed_list {
            let tr = &workload(&sc, seed);
            let mut r = run(p, &variant, tr, late);
            let x = r.cold as f64 / r.bound as f64;
            xs.push(x);
            if windows {
                let ts: Vec<String> =
                    r.windows.iter().map(|(n, c)| format!("{:.0}", 100.0 * *c as f64 / (*n).max(1) as f64)).collect();
                println!("cold % per 5 s: {}", ts.join(" "));
            }
            if variant == "churn" {
                let (called, on_0, homed) = r.rejoin;
                println!("rejoin: {on_0} of {called} functions called after node 0 returned went to it ({homed} homed there)");
            }
            let mean = r.busy.iter().sum::<f64>() / NODES as f64;
            let max = r.busy.iter().copied().fold(0.0, f64::max);
            println!(
                "| {p} | {seed} | {:.0} | {:.0} | {:.1} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {} | {:.1} | {} | {} | {}: {} / {} / {} |",
                tr.rate,
                tr.mean_exec_ms,
                100.0 * r.cold as f64 / r.calls as f64,
                x,
                pct(&mut r.excess, 0.5),
                pct(&mut r.excess, 0.99),
                pct(&mut r.excess, 0.999),
                max / mean,
                r.evictions,
                100.0 * r.spilled as f64 / r.calls as f64,
                r.late,
                r.refused,
                r.waits,
                r.handed_warm,
                r.handed_room,
                r.went_cold
            );
            if let Some((s, e)) = tr.spike_window() {
                let (w, s, e) = (tr.config.warmup.as_secs_f64(), s.as_secs_f64(), e.as_secs_f64());
                let flags = fnsim::bound::cold_flags(&tr.calls, IDLE);
                let bound = tr.calls.iter().zip(flags).map(|(c, cold)| (c.at.as_secs_f64(), cold));
                let mine = spike_recovery(std::mem::take(&mut r.points), w, s, e);
                println!(
                    "spike {p} seed {seed}: {}; bound: {}",
                    mine.render(),
                    spike_recovery(bound, w, s, e).render()
                );
            }
        }
        println!("| {p} | mean | | | | {:.2} | | | | | | | | | |", xs.iter().sum::<f64>() / xs.len() as f64);
    }
}
