//! The call engine: one function call's way through the balancer, as a state machine with no
//! I/O. Both transports — the raw HTTP/1.1 fast path ([`super::h1`]) and the hyper path
//! ([`super::Proxy::forward`]) — are thin shells around it: they ask [`Call::next`] where to send,
//! do the I/O, and report what happened ([`Call::failed`], [`Call::answered`]). Everything that
//! must be the same whatever the transport is decided here, once: the pick and the tried list,
//! the attempt guard, whose fault a failure is, whether the call may move to another node, the
//! client's status and `{"msg":...}`, the node's marks (suspect, queue wait, spill) and the
//! observation.
//!
//! A function call runs at most once (SPEC, Proxying): a call moves to another node only when no
//! node can have started it (the connection could not be made, or a reused connection was found
//! closed before any byte was written). Once a byte of it was written, it is sent again only when
//! the operator allowed it (`-retry-idempotent` for bodiless GET/HEAD/OPTIONS, or an
//! `Idempotency-Key` on the request), and only within the [`RetryBudget`].
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::clock;
use crate::metrics::{Retry, Unserved, UpstreamError};
use crate::node::manager::NodesHandle;
use crate::node::{InFlight, Node, Snapshot};
use crate::route::wait::{Decision, Leave, WaitConfig, WaitQueue, WaitRule, Waiter};
use crate::route::{Attempt, Balancers, Placement, Policy};
use crate::telemetry::call::CallObs;

/// Distinct nodes one call may be tried on before the client gets an error.
pub(crate) const MAX_NODES_TRIED: usize = 3;
/// Reused connections one call may find closed before it gets a fresh one (each costs nothing:
/// no byte was sent), so that a pool full of dead connections cannot keep a call looping.
const MAX_STALE: u8 = 4;

/// nginx logs a call the client gave up on as 499.
pub(crate) fn client_closed() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Whose fault a failure is (pingora's `ErrorSource`): only a node's fault counts against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Client,
    Node,
    /// Nobody's: a kept-alive connection the node closed while idle, as it may.
    Nobody,
}

/// What went wrong in one attempt, as a transport saw it.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be made (refused, unreachable, connect timeout): nothing was sent.
    Connect(String),
    /// A reused kept-alive connection was found closed before any byte of the call was written.
    Stale,
    /// The node closed or failed the connection after bytes of the call were written and before
    /// its answer: the call may have run.
    Broke(String),
    /// The node did not start answering within -upstream-timeout of the request being sent.
    Timeout(Duration),
    /// The node took no byte of the request body for -upstream-timeout (it stopped reading the
    /// upload without answering or closing): the call may have run.
    Stalled(Duration),
    /// The node answered something that is not HTTP (or not HTTP we forward).
    Invalid(String),
    /// The client's body is malformed (bad chunked framing).
    ClientBody(&'static str),
    /// The client's body stopped arriving for longer than -client-body-timeout.
    ClientBodyTimeout,
    /// The client went away (closed, aborted its upload, or stopped the stream).
    ClientGone,
}

impl Failure {
    /// Whose fault it is.
    pub(crate) fn fault(&self) -> Fault {
        match self {
            Failure::Connect(_)
            | Failure::Broke(_)
            | Failure::Timeout(_)
            | Failure::Stalled(_)
            | Failure::Invalid(_) => Fault::Node,
            Failure::Stale => Fault::Nobody,
            Failure::ClientBody(_) | Failure::ClientBodyTimeout | Failure::ClientGone => Fault::Client,
        }
    }

    /// Whether a node may have started the call (some byte of it was written).
    pub(crate) fn may_have_run(&self) -> bool {
        !matches!(self, Failure::Connect(_) | Failure::Stale)
    }
}

/// What the shell does next.
pub(crate) enum Next<'a> {
    /// Send the call to this node (over a fresh connection if `fresh`: the last reused one was
    /// found closed).
    Send { node: &'a Arc<Node>, fresh: bool },
    /// Answer the client with this and end the call (`close`: the client connection must close,
    /// e.g. its body was not read to its end). A status of 499 means: write nothing, close.
    /// `retry_after_s`: a `Retry-After` header (late binding refused the call).
    Answer { status: StatusCode, msg: String, close: bool, retry_after_s: Option<u32> },
    /// Late binding: the call waits at the balancer. Run [`wait`] (the shell adds its own
    /// client-gone signal), then ask [`Call::next`] again.
    Wait(Waiting),
}

/// Late binding (`-late-binding`): the waiting rule and the calls waiting at the balancer,
/// shared by every call of the proxy.
pub(crate) struct Late {
    pub rule: WaitRule,
    pub queue: WaitQueue<Arc<Node>>,
}

impl Late {
    /// `cfg`: [`WaitConfig::new`] of a node's slots (`-node-capacity`), shared by the
    /// balancers `balancers` counts (live).
    pub(crate) fn new(cfg: WaitConfig, balancers: Balancers) -> Late {
        Late { rule: WaitRule::new(cfg).shared_by(balancers), queue: WaitQueue::new(cfg) }
    }
}

/// A call waiting at the balancer: its place in the queue and the time ([`clock::now_ms`]) to
/// look again ([`Call::deadline`]).
pub(crate) struct Waiting {
    waiter: Waiter<Arc<Node>>,
    until_ms: u64,
}

/// Waits out [`Next::Wait`]: until the call is handed a node, its deadline says where it goes
/// (or that it is refused), or `gone` resolves (the client left: returns false, and the waiter is
/// dropped, which frees its place). Then the shell asks [`Call::next`] (or abandons the call).
pub(crate) async fn wait<G: std::future::Future<Output = ()>>(call: &mut Call<'_>, mut w: Waiting, gone: G) -> bool {
    tokio::pin!(gone);
    loop {
        let sleep = tokio::time::sleep(Duration::from_millis(w.until_ms.saturating_sub(clock::now_ms())));
        tokio::select! {
            handed = w.waiter.handed() => {
                call.waited(handed.map(|h| h.node));
                return true;
            }
            _ = sleep => match call.deadline(w) {
                Some(again) => w = again,
                None => return true,
            },
            _ = &mut gone => return false,
        }
    }
}

/// The in-flight mark of an answered call, held by the shell until the response body has been
/// passed on. Dropped, the node's container is idle: with late binding, it goes to a call of
/// the same function waiting at the balancer (warm), else the slot to the oldest waiter past its
/// cold deadline.
pub(crate) struct Held {
    in_flight: Option<InFlight>,
    release: Option<(WaitQueue<Arc<Node>>, u32, u64)>,
}

impl Held {
    pub(crate) fn node(&self) -> &Arc<Node> {
        self.in_flight.as_ref().expect("held until dropped").node()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(f) = self.in_flight.take() else { return };
        let Some((queue, slots, hash)) = self.release.take() else { return };
        if queue.is_empty() {
            return;
        }
        let node = Arc::clone(f.node());
        drop(f);
        // A slot is free there (no call of this balancer queues on the node), as
        // `WaitRule::has_slot` says.
        if node.in_flight() < slots {
            let now = clock::now_ms();
            if queue.on_call_end(hash, &node, now).is_none() {
                queue.on_room(&node, now);
            }
        }
    }
}

/// The request facts the engine decides by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request<'r> {
    pub method: &'r Method,
    /// The request has no body (nothing to replay but the head).
    pub bodiless: bool,
    /// The request carries `Idempotency-Key`.
    pub idempotency_key: bool,
    /// The transport can send the whole request again (its body, if any, is still at hand).
    pub replayable: bool,
}

impl Request<'_> {
    /// Whether the call may be sent again after a node failed under it.
    fn resendable(&self, retry_idempotent: bool) -> bool {
        let safe_method = matches!(*self.method, Method::GET | Method::HEAD | Method::OPTIONS);
        self.replayable && ((retry_idempotent && self.bodiless && safe_method) || self.idempotency_key)
    }
}

/// Who hears that a node looks unreachable. The node manager in the balancer; a recorder in
/// tests.
pub(crate) trait Suspects: Send + Sync {
    fn report_unreachable(&self, node: &Node);
}

impl Suspects for NodesHandle {
    fn report_unreachable(&self, node: &Node) {
        NodesHandle::report_unreachable(self, node);
    }
}

/// What every call shares: the policy, the node marks, the budget and the operator's choices.
pub(crate) struct Rules<'a> {
    pub policy: &'a dyn Policy,
    pub suspects: &'a dyn Suspects,
    pub budget: &'a RetryBudget,
    pub retry_idempotent: bool,
    /// Late binding, when on.
    pub late: Option<&'a Late>,
}

/// One function call, from its arrival to its answer.
pub(crate) struct Call<'a> {
    rules: Rules<'a>,
    snap: &'a Snapshot,
    hash: u64,
    tried: [usize; MAX_NODES_TRIED],
    n_tried: usize,
    attempt: Option<Attempt<'a>>,
    in_flight: Option<InFlight>,
    /// Taken when the call is finished; a call dropped unfinished was abandoned (499).
    obs: Option<CallObs<'a>>,
    resendable: bool,
    /// The next pick stays on the same node (a stale connection: nothing was sent).
    same_node: bool,
    stale: u8,
    /// Some node may have started the call.
    may_have_run: bool,
    /// The last node failure, for the client's message.
    last_error: String,
    /// Late binding is done with this call (it was placed, waited, or is past its first pick).
    bound: bool,
    /// An attempt was opened while waiting: the next step sends it.
    ready: bool,
    /// Late binding refused it: the next step answers 503 with this `Retry-After`.
    refused: Option<u32>,
    give_up_ms: u64,
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Next::Send { node, fresh } => write!(f, "Send({}, fresh: {fresh})", node.addr),
            Next::Answer { status, msg, close, retry_after_s } => {
                write!(f, "Answer({status}, {msg:?}, close: {close}, retry after: {retry_after_s:?})")
            }
            Next::Wait(w) => write!(f, "Wait(until {} ms)", w.until_ms),
        }
    }
}

impl<'a> Call<'a> {
    pub(crate) fn new(rules: Rules<'a>, snap: &'a Snapshot, hash: u64, req: Request<'_>, obs: CallObs<'a>) -> Call<'a> {
        rules.budget.deposit(clock::now_ms());
        let resendable = req.resendable(rules.retry_idempotent);
        Call {
            rules,
            snap,
            hash,
            tried: [usize::MAX; MAX_NODES_TRIED],
            n_tried: 0,
            attempt: None,
            in_flight: None,
            obs: Some(obs),
            resendable,
            same_node: false,
            stale: 0,
            may_have_run: false,
            last_error: String::new(),
            bound: false,
            ready: false,
            refused: None,
            give_up_ms: 0,
        }
    }

    /// The observation, while the call runs (for the shell's trace headers).
    pub(crate) fn obs(&mut self) -> &mut CallObs<'a> {
        self.obs.as_mut().expect("the call is not finished")
    }

    /// Where the call goes now. A later step (waiting at the balancer for a warm container) fits
    /// between two picks here.
    #[allow(clippy::should_implement_trait)] // Not an iterator: each step depends on what the shell reports.
    pub(crate) fn next(&mut self) -> Next<'a> {
        if self.ready {
            self.ready = false;
            if let Some(node) = self.attempt.as_ref().map(super::super::route::Attempt::node) {
                self.obs().attempt();
                return Next::Send { node, fresh: false };
            }
        }
        if let Some(retry_after_s) = self.refused.take() {
            return self.refuse(retry_after_s);
        }
        if self.same_node {
            self.same_node = false;
            if let Some(node) = self.attempt.as_ref().map(super::super::route::Attempt::node) {
                self.obs().attempt();
                return Next::Send { node, fresh: true };
            }
        }
        self.attempt = None;
        self.in_flight = None;
        if let Some(late) = self.rules.late.filter(|_| !self.bound && self.n_tried == 0) {
            self.bound = true;
            if let Some(next) = self.place_late(late) {
                return next;
            }
        }
        if self.n_tried < MAX_NODES_TRIED {
            if let Some(attempt) = self.rules.policy.pick(self.snap, self.hash, &self.tried[..self.n_tried]) {
                let node = attempt.node();
                self.tried[self.n_tried] = attempt.index();
                self.n_tried += 1;
                self.in_flight = Some(node.start_call());
                self.attempt = Some(attempt);
                self.obs().attempt();
                return Next::Send { node, fresh: false };
            }
        }
        if self.n_tried == 0 {
            return self.end(StatusCode::SERVICE_UNAVAILABLE, "no nodes available".to_string(), Unserved::NoNodes);
        }
        if self.may_have_run {
            let msg = format!("{}; the call may have run, so it was not sent again", self.last_error);
            return self.end(StatusCode::BAD_GATEWAY, msg, Unserved::NodeFailed);
        }
        let msg = format!("no node could be reached: {}", self.last_error);
        self.end(StatusCode::SERVICE_UNAVAILABLE, msg, Unserved::Unreachable)
    }

    /// Late binding's first step: send the call where the policy can take it warm, else ask the
    /// waiting rule (cold now, wait, or refuse). `None`: no node at all (the ordinary pick says
    /// so).
    fn place_late(&mut self, late: &'a Late) -> Option<Next<'a>> {
        let now = clock::now_ms();
        let i = match self.rules.policy.place(self.snap, self.hash, &[])? {
            Placement::Go(i) => i,
            p => {
                let view = late.queue.view(self.hash);
                match late.rule.decide(self.snap, self.rules.policy.warmth(), self.hash, p, view, now) {
                    Decision::Cold(i) => i,
                    Decision::Refuse { retry_after_s } => return Some(self.refuse(retry_after_s)),
                    Decision::Wait { cold_at_ms, give_up_ms } => match late.queue.enqueue(self.hash, now, cold_at_ms) {
                        Ok(waiter) => {
                            self.give_up_ms = give_up_ms;
                            let until_ms = if cold_at_ms > now { cold_at_ms } else { give_up_ms };
                            return Some(Next::Wait(Waiting { waiter, until_ms }));
                        }
                        Err(_) => return Some(self.refuse(late.rule.cfg.give_up_ms.div_ceil(1000).max(1) as u32)),
                    },
                }
            }
        };
        self.open(i);
        self.ready = false;
        let node = self.attempt.as_ref().map(super::super::route::Attempt::node)?;
        self.obs().attempt();
        Some(Next::Send { node, fresh: false })
    }

    /// Opens the attempt on node `i` of the snapshot (late binding placed the call there).
    fn open(&mut self, i: usize) {
        let attempt = self.rules.policy.open(self.snap, self.hash, i);
        self.tried[self.n_tried] = i;
        self.n_tried += 1;
        self.in_flight = Some(attempt.node().start_call());
        self.attempt = Some(attempt);
        self.ready = true;
    }

    /// The waiting call was handed `node` (or nothing: the queue went away): it goes there if
    /// the node is still in the snapshot; else the ordinary pick places it.
    pub(crate) fn waited(&mut self, node: Option<Arc<Node>>) {
        let i = node.and_then(|n| self.snap.nodes().iter().position(|m| Arc::ptr_eq(m, &n)));
        if let Some(i) = i {
            self.open(i);
        }
    }

    /// The waiting call's deadline: place it again; a node that can take it now, or one with a
    /// free slot, gets it (cold); else it waits on until its give-up time, then is refused.
    /// Returns the waiting to go on with, or `None`: ask [`Call::next`].
    pub(crate) fn deadline(&mut self, w: Waiting) -> Option<Waiting> {
        let now = clock::now_ms();
        let late = self.rules.late?;
        let decision = match self.rules.policy.place(self.snap, self.hash, &[]) {
            Some(Placement::Go(i) | Placement::Room(i)) => Decision::Cold(i),
            Some(Placement::Full(best)) => late.rule.at_deadline(self.snap, best, self.give_up_ms, now),
            None => {
                // No node at all now: the ordinary pick answers.
                let handed = w.waiter.leave(Leave::GaveUp, now);
                self.waited(handed.map(|h| h.node));
                return None;
            }
        };
        match decision {
            Decision::Cold(i) => match w.waiter.leave(Leave::Cold, now) {
                Some(h) => self.waited(Some(h.node)),
                None => self.open(i),
            },
            Decision::Refuse { retry_after_s } => match w.waiter.leave(Leave::GaveUp, now) {
                Some(h) => self.waited(Some(h.node)),
                None => self.refused = Some(retry_after_s),
            },
            Decision::Wait { give_up_ms, .. } => return Some(Waiting { waiter: w.waiter, until_ms: give_up_ms }),
        }
        None
    }

    fn refuse(&mut self, retry_after_s: u32) -> Next<'a> {
        let msg = "every node is saturated; the call could not be placed in time, try again later".to_string();
        let Next::Answer { status, msg, close, .. } =
            self.end(StatusCode::SERVICE_UNAVAILABLE, msg, Unserved::Saturated)
        else {
            unreachable!("end answers")
        };
        Next::Answer { status, msg, close, retry_after_s: Some(retry_after_s) }
    }

    /// The current attempt failed. The one place where a failure's fault decides the metrics, the
    /// node's mark, whether the call goes on, and the client's answer. Returns what to do: `None`,
    /// ask [`Call::next`]; `Some`, answer the client and end the call.
    pub(crate) fn failed(&mut self, failure: Failure) -> Option<Next<'a>> {
        let node = self.attempt.as_ref().map(super::super::route::Attempt::node);
        let addr = node.map_or("-", |n| n.addr.as_str());
        let error = match &failure {
            Failure::Connect(e) => e.clone(),
            Failure::Stale => String::new(),
            Failure::Broke(e) => format!("node {addr}: {e}"),
            Failure::Timeout(limit) => format!("node {addr} did not answer within {}s", limit.as_secs_f64()),
            Failure::Stalled(limit) => {
                format!("node {addr} took no byte of the request body for {}s", limit.as_secs_f64())
            }
            Failure::Invalid(why) => format!("node {addr}: {why}"),
            Failure::ClientBody(why) => (*why).to_string(),
            Failure::ClientBodyTimeout => "request body timed out".to_string(),
            Failure::ClientGone => String::new(),
        };
        // The metrics and the node's mark: a node's fault only.
        if let Some(node) = node {
            let kind = match &failure {
                Failure::Connect(_) => Some(UpstreamError::Connect),
                Failure::Broke(_) => Some(UpstreamError::Send),
                Failure::Invalid(_) => Some(UpstreamError::InvalidResponse),
                Failure::Timeout(_) | Failure::Stalled(_) => Some(UpstreamError::Timeout),
                _ => None,
            };
            // A node that cannot be connected to, or dropped a call, looks dead: skip it until a
            // check passes. One that is slow or answered garbage is alive: it keeps its keys.
            if matches!(failure, Failure::Connect(_) | Failure::Broke(_)) {
                self.rules.suspects.report_unreachable(node);
            }
            let retry = match &failure {
                Failure::Connect(_) => Some(Retry::ConnectFailed),
                Failure::Stale => Some(Retry::StaleConnection),
                _ => Some(Retry::SendFailed),
            };
            if let Some(obs) = self.obs.as_mut() {
                if kind.is_some() || matches!(failure, Failure::Stale) {
                    obs.failed(node, kind, retry, &error);
                }
            }
        }
        self.may_have_run |= failure.may_have_run() && failure.fault() == Fault::Node;
        match failure {
            Failure::Connect(_) => {
                self.last_error = error;
                None
            }
            Failure::Stale if self.stale < MAX_STALE && self.attempt.is_some() => {
                self.stale += 1;
                self.same_node = true;
                None
            }
            Failure::Stale => None,
            Failure::Broke(_) => {
                if !self.resendable {
                    let msg = format!("{error}; the call may have run, so it was not sent again");
                    return Some(self.end(StatusCode::BAD_GATEWAY, msg, Unserved::NodeFailed));
                }
                if !self.rules.budget.withdraw(clock::now_ms()) {
                    let msg = format!("{error}; the call may have run, and the retry budget is spent");
                    return Some(self.end(StatusCode::BAD_GATEWAY, msg, Unserved::Budget));
                }
                self.last_error = error;
                None
            }
            Failure::Timeout(_) | Failure::Stalled(_) => {
                // Slow is not dead: not resent (it may be running); dropping the connection
                // cancels it on the node.
                let msg = format!("{error}; the call may have run");
                Some(self.end(StatusCode::GATEWAY_TIMEOUT, msg, Unserved::Timeout))
            }
            Failure::Invalid(_) => {
                let msg = format!("invalid response from {error}");
                Some(self.end(StatusCode::BAD_GATEWAY, msg, Unserved::BadGateway))
            }
            Failure::ClientBody(_) => Some(self.end_client(StatusCode::BAD_REQUEST, error)),
            Failure::ClientBodyTimeout => Some(self.end_client(StatusCode::REQUEST_TIMEOUT, error)),
            Failure::ClientGone => Some(self.abandon()),
        }
    }

    /// The node answered with this status, reporting this queue wait. Returns the in-flight
    /// mark, which the shell holds until the response body has been passed on.
    pub(crate) fn answered(&mut self, status: StatusCode, wait: Option<Duration>) -> Option<Held> {
        let attempt = self.attempt.take()?;
        // One clock read for everything the answer updates.
        let now = Instant::now();
        let round_trip = self
            .obs
            .as_ref()
            .and_then(super::super::telemetry::call::CallObs::sent_at)
            .map(|sent| now.saturating_duration_since(sent));
        let release = self.rules.late.map(|late| {
            if let Some(w) = wait {
                late.rule.observe_wait(self.hash, w);
                if let Some(rt) = round_trip {
                    late.rule.observe_exec(self.hash, rt.saturating_sub(w));
                }
            }
            (late.queue.clone(), late.rule.cfg.slots, self.hash)
        });
        let (index, node) = (attempt.index(), attempt.node());
        if self.snap.table().home(self.hash) != Some(index) {
            // Served away from its home: full, down, or a retry moved it.
            crate::metrics::spill(node);
        }
        if let Some(w) = wait {
            node.observe_wait(w);
        }
        attempt.answered(wait, status);
        if let Some(obs) = &mut self.obs {
            obs.answered(node, self.hash, status, wait, round_trip.unwrap_or_default(), now);
            obs.finish_at(status, None, now);
        }
        // Finished: dropped where it is (not moved out), so no path observes it again.
        self.obs = None;
        self.in_flight.take().map(|f| Held { in_flight: Some(f), release })
    }

    /// The client left before its answer: 499, observed with the time spent.
    pub(crate) fn abandon(&mut self) -> Next<'a> {
        if let Some(obs) = self.obs.take() {
            obs.abandoned(self.attempt.as_ref().map(|a| &**a.node()), self.hash);
        }
        self.attempt = None;
        self.in_flight = None;
        Next::Answer { status: client_closed(), msg: String::new(), close: true, retry_after_s: None }
    }

    fn end(&mut self, status: StatusCode, msg: String, why: Unserved) -> Next<'a> {
        if let Some(obs) = self.obs.take() {
            obs.finish(status, Some(why));
        }
        self.attempt = None;
        self.in_flight = None;
        Next::Answer { status, msg, close: false, retry_after_s: None }
    }

    fn end_client(&mut self, status: StatusCode, msg: String) -> Next<'a> {
        if let Some(obs) = self.obs.take() {
            obs.finish(status, None);
        }
        self.attempt = None;
        self.in_flight = None;
        Next::Answer { status, msg, close: true, retry_after_s: None }
    }
}

impl Drop for Call<'_> {
    /// A call dropped unfinished was abandoned by its client (on the hyper path: the service
    /// future was dropped): it is still observed, as a 499.
    fn drop(&mut self) {
        if self.obs.is_some() {
            self.abandon();
        }
    }
}

/// Bounds resends so that a failing fleet is not hit twice as hard (linkerd's and Envoy's retry
/// budget): resends may be up to [`RetryBudget::RATIO`] of the calls of the last
/// [`RetryBudget::WINDOW_S`] seconds, plus [`RetryBudget::FLOOR_PER_S`] per second. Lock-free:
/// one slot per second of the window, each an epoch and two counters; a race at a slot's turn of
/// the second loses a count or two, which a budget can afford. Its seconds are the call
/// engine's clock's ([`clock::now_ms`]): a coarse read, where an `Instant` subtraction per call
/// cost ~40 instructions more.
#[derive(Default)]
pub(crate) struct RetryBudget {
    /// Per slot: the second it counts (of [`clock::now_ms`], plus one), calls, resends.
    slots: [[AtomicU64; 3]; RetryBudget::WINDOW_S as usize],
}

impl RetryBudget {
    pub(crate) const WINDOW_S: u64 = 10;
    pub(crate) const RATIO: f64 = 0.2;
    pub(crate) const FLOOR_PER_S: u64 = 10;

    fn slot(&self, now_ms: u64) -> &[AtomicU64; 3] {
        let sec = now_ms / 1000 + 1;
        let slot = &self.slots[(sec % Self::WINDOW_S) as usize];
        if slot[0].load(Relaxed) != sec && slot[0].swap(sec, Relaxed) != sec {
            slot[1].store(0, Relaxed);
            slot[2].store(0, Relaxed);
        }
        slot
    }

    /// A call arrived, at `now_ms`.
    pub(crate) fn deposit(&self, now_ms: u64) {
        self.slot(now_ms)[1].fetch_add(1, Relaxed);
    }

    /// Asks to resend a call; true (and counted) when the budget allows it.
    pub(crate) fn withdraw(&self, now_ms: u64) -> bool {
        let current = self.slot(now_ms);
        let sec = current[0].load(Relaxed);
        let (mut calls, mut resends) = (0, 0);
        for s in &self.slots {
            if sec.saturating_sub(s[0].load(Relaxed)) < Self::WINDOW_S {
                calls += s[1].load(Relaxed);
                resends += s[2].load(Relaxed);
            }
        }
        let allowed = (calls as f64 * Self::RATIO) as u64 + Self::FLOOR_PER_S * Self::WINDOW_S;
        if resends >= allowed {
            return false;
        }
        current[2].fetch_add(1, Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::route::testing::{key, snapshot};
    use crate::route::ConsistentHash;
    use crate::telemetry::Observers;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Suspects for Recorder {
        fn report_unreachable(&self, node: &Node) {
            self.0.lock().unwrap().push(node.addr.to_string());
        }
    }

    impl Recorder {
        fn reported(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    struct World {
        snap: Snapshot,
        obs: Observers,
        suspects: Recorder,
        budget: RetryBudget,
    }

    fn world(nodes: usize) -> World {
        World {
            snap: snapshot(nodes, &[]),
            obs: Observers::default(),
            suspects: Recorder::default(),
            budget: RetryBudget::default(),
        }
    }

    const GET: Method = Method::GET;
    const POST: Method = Method::POST;

    fn bodiless(method: &Method) -> Request<'_> {
        Request { method, bodiless: true, idempotency_key: false, replayable: true }
    }

    fn call<'a>(w: &'a World, req: Request<'_>, retry_idempotent: bool) -> Call<'a> {
        let rules =
            Rules { policy: &ConsistentHash, suspects: &w.suspects, budget: &w.budget, retry_idempotent, late: None };
        let client = "127.0.0.1:1".parse().unwrap();
        let obs = w.obs.start(req.method.clone(), "/r/app/fn", |_| None, client, Instant::now());
        Call::new(rules, &w.snap, key(1).1, req, obs)
    }

    fn send<'a>(next: Next<'a>) -> &'a Arc<Node> {
        match next {
            Next::Send { node, .. } => node,
            other => panic!("expected a node, got {other:?}"),
        }
    }

    fn answer(next: Option<Next<'_>>) -> (u16, String) {
        match next {
            Some(Next::Answer { status, msg, .. }) => (status.as_u16(), msg),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn refused_connections_move_on_and_end_in_503_when_every_node_refused() {
        let w = world(3);
        let mut c = call(&w, bodiless(&POST), false);
        let mut seen = Vec::new();
        for _ in 0..3 {
            let node = send(c.next());
            seen.push(node.addr.to_string());
            assert!(c.failed(Failure::Connect(format!("connect to {}: refused", node.addr))).is_none());
        }
        seen.dedup();
        assert_eq!(seen.len(), 3, "three distinct nodes");
        let Next::Answer { status, msg, .. } = c.next() else { panic!() };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(msg.starts_with("no node could be reached: connect to"), "{msg}");
        assert_eq!(w.suspects.reported(), seen, "each refusing node is suspect");
    }

    #[test]
    fn no_healthy_node_is_no_nodes_available() {
        let w = World { snap: snapshot(2, &[false, false]), ..world(0) };
        let mut c = call(&w, bodiless(&GET), true);
        let Next::Answer { status, msg, .. } = c.next() else { panic!() };
        assert_eq!((status.as_u16(), msg.as_str()), (503, "no nodes available"));
    }

    #[test]
    fn a_call_written_to_a_node_that_broke_is_not_resent_by_default() {
        let w = world(3);
        for method in [GET, POST, Method::HEAD] {
            let mut c = call(&w, bodiless(&method), false);
            let node = send(c.next());
            let (status, msg) = answer(c.failed(Failure::Broke("connection reset".into())));
            assert_eq!(status, 502, "{method}");
            assert!(msg.contains("may have run") && msg.contains(node.addr.as_str()), "{msg}");
        }
    }

    #[test]
    fn retry_idempotent_resends_bodiless_get_head_options_only() {
        let w = world(3);
        let mut c = call(&w, bodiless(&GET), true);
        let first = send(c.next()).clone();
        assert!(c.failed(Failure::Broke("reset".into())).is_none());
        let second = send(c.next());
        assert_ne!(first.addr, second.addr, "resent to the next node");
        // The second node failing too, and the third refusing: the answer says the call may have
        // run, never that no node could be reached.
        assert!(c.failed(Failure::Broke("reset".into())).is_none());
        send(c.next());
        assert!(c.failed(Failure::Connect("refused".into())).is_none());
        let Next::Answer { status, msg, .. } = c.next() else { panic!() };
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(msg.contains("may have run"), "{msg}");

        for req in [
            bodiless(&POST),
            Request { method: &GET, bodiless: false, idempotency_key: false, replayable: true },
            Request { method: &GET, bodiless: true, idempotency_key: false, replayable: false },
        ] {
            let mut c = call(&w, req, true);
            send(c.next());
            assert_eq!(answer(c.failed(Failure::Broke("reset".into()))).0, 502, "{req:?}");
        }
    }

    #[test]
    fn an_idempotency_key_allows_a_resend_of_any_method() {
        let w = world(2);
        let req = Request { method: &POST, bodiless: false, idempotency_key: true, replayable: true };
        let mut c = call(&w, req, false);
        send(c.next());
        assert!(c.failed(Failure::Broke("reset".into())).is_none());
        send(c.next());
    }

    #[test]
    fn a_stale_connection_stays_on_its_node_with_a_fresh_connection() {
        let w = world(3);
        let mut c = call(&w, bodiless(&POST), false);
        let first = send(c.next()).clone();
        assert!(c.failed(Failure::Stale).is_none());
        let Next::Send { node, fresh } = c.next() else { panic!() };
        assert_eq!((node.addr.clone(), fresh), (first.addr.clone(), true));
        assert!(w.suspects.reported().is_empty(), "an idle close is nobody's fault");
        assert!(c.answered(StatusCode::OK, None).is_some());
    }

    #[test]
    fn client_faults_never_count_against_the_node() {
        let w = world(2);
        let status = |f: Failure| {
            let mut c = call(&w, bodiless(&POST), false);
            send(c.next());
            let before = metrics_text();
            let got = answer(c.failed(f)).0;
            assert_eq!(before, metrics_text(), "no upstream error counted");
            got
        };
        assert_eq!(status(Failure::ClientBody("invalid chunked body")), 400);
        assert_eq!(status(Failure::ClientBodyTimeout), 408);
        assert_eq!(status(Failure::ClientGone), 499);
        assert!(w.suspects.reported().is_empty());
    }

    fn metrics_text() -> String {
        // The upstream error counters of the test nodes (other tests share the process).
        let mut out = String::new();
        for port in 9001..9004 {
            let addr = crate::node::NodeAddr::parse(&format!("127.0.0.1:{port}")).unwrap();
            let m = crate::metrics::get().node(&addr);
            out.push_str(&format!("{:?};", m.errors_snapshot()));
        }
        out
    }

    #[test]
    fn timeout_stall_and_garbage_are_answered_without_a_resend_or_a_suspect() {
        let w = world(2);
        let mut c = call(&w, bodiless(&GET), true);
        send(c.next());
        let (status, msg) = answer(c.failed(Failure::Timeout(Duration::from_secs(2))));
        assert_eq!(status, 504);
        assert!(msg.contains("did not answer within 2s"), "{msg}");
        let mut c = call(&w, bodiless(&GET), true);
        send(c.next());
        let (status, msg) = answer(c.failed(Failure::Stalled(Duration::from_secs(3))));
        assert_eq!(status, 504);
        assert!(msg.contains("took no byte of the request body for 3s; the call may have run"), "{msg}");
        let mut c = call(&w, bodiless(&GET), true);
        send(c.next());
        let (status, msg) = answer(c.failed(Failure::Invalid("bad status line".into())));
        assert_eq!(status, 502);
        assert!(msg.starts_with("invalid response from node 127.0.0.1:"), "{msg}");
        assert!(w.suspects.reported().is_empty());
    }

    #[test]
    fn a_dropped_call_is_abandoned_and_closes_its_pick() {
        let w = world(2);
        let mut c = call(&w, bodiless(&GET), false);
        let node = send(c.next()).clone();
        assert_eq!(node.in_flight(), 1);
        drop(c);
        assert_eq!(node.in_flight(), 0, "the in-flight mark ends with the call");
    }

    #[test]
    fn the_budget_allows_a_share_of_calls_plus_a_floor() {
        let t0 = clock::now_ms();
        let b = RetryBudget::default();
        let floor = RetryBudget::FLOOR_PER_S * RetryBudget::WINDOW_S;
        for _ in 0..1000 {
            b.deposit(t0);
        }
        let allowed = (0..2000).filter(|_| b.withdraw(t0)).count() as u64;
        assert_eq!(allowed, 200 + floor);
        // Past the window, old calls and resends no longer count.
        let later = t0 + (RetryBudget::WINDOW_S + 1) * 1000;
        let allowed = (0..2000).filter(|_| b.withdraw(later)).count() as u64;
        assert_eq!(allowed, floor);
    }

    #[test]
    fn a_budget_refusal_is_a_502() {
        let w = world(3);
        while w.budget.withdraw(clock::now_ms()) {}
        let mut c = call(&w, bodiless(&GET), true);
        send(c.next());
        let (status, msg) = answer(c.failed(Failure::Broke("reset".into())));
        assert_eq!(status, 502);
        assert!(msg.contains("retry budget"), "{msg}");
    }

    /// A call of `w` through `policy` with late binding `late` (one node of 1 slot in the tests).
    fn late_call<'a>(w: &'a World, policy: &'a dyn Policy, late: &'a Late) -> Call<'a> {
        let rules =
            Rules { policy, suspects: &w.suspects, budget: &w.budget, retry_idempotent: false, late: Some(late) };
        let obs = w.obs.start(POST, "/r/app/fn", |_| None, "127.0.0.1:1".parse().unwrap(), Instant::now());
        Call::new(rules, &w.snap, key(1).1, bodiless(&POST), obs)
    }

    fn waiting(next: Next<'_>) -> Waiting {
        match next {
            Next::Wait(w) => w,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn a_call_that_finds_the_node_full_waits_and_is_handed_the_container_that_frees() {
        let w = world(1);
        let policy = crate::route::bounded::Bounded::new(1.25, 1, 1);
        let late = Late::new(WaitConfig::new(1), Balancers::new(1));
        let mut first = late_call(&w, &policy, &late);
        let node = Arc::clone(send(first.next()));
        let mut second = late_call(&w, &policy, &late);
        let mut wait = waiting(second.next());
        assert_eq!(late.queue.len(), 1);
        // Its cold deadline: the node is still full, so it waits on, until its give-up time.
        wait = second.deadline(wait).expect("still waiting");
        assert_eq!(wait.until_ms, second.give_up_ms);
        // The first call's answer has been passed on: its container goes to the waiter, warm.
        let held = first.answered(StatusCode::OK, Some(Duration::from_millis(1))).expect("held");
        assert_eq!(late.queue.len(), 1, "handed when the body has been passed on, not before");
        drop(held);
        let handed = wait.waiter.try_handed().expect("handed");
        assert!(handed.warm);
        second.waited(Some(handed.node));
        assert!(Arc::ptr_eq(send(second.next()), &node));
        let s = late.queue.stats().counts();
        assert_eq!((s.waits, s.handed_warm, s.now), (1, 1, 0));
    }

    #[test]
    fn a_call_still_unplaced_at_its_give_up_time_is_refused_with_retry_after() {
        let w = world(1);
        let policy = crate::route::bounded::Bounded::new(1.25, 1, 1);
        let late = Late::new(WaitConfig::new(1), Balancers::new(1));
        let mut first = late_call(&w, &policy, &late);
        send(first.next());
        let mut second = late_call(&w, &policy, &late);
        let wait = waiting(second.next());
        second.give_up_ms = 1; // long past
        assert!(second.deadline(wait).is_none());
        match second.next() {
            Next::Answer { status, msg, retry_after_s, .. } => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(retry_after_s, Some(4));
                assert!(msg.contains("saturated"), "{msg}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let s = late.queue.stats().counts();
        assert_eq!((s.gave_up, s.now), (1, 0));
    }

    #[test]
    fn a_waiting_call_dropped_leaves_no_trace_in_the_queue() {
        let w = world(1);
        let policy = crate::route::bounded::Bounded::new(1.25, 1, 1);
        let late = Late::new(WaitConfig::new(1), Balancers::new(1));
        let mut first = late_call(&w, &policy, &late);
        send(first.next());
        let mut second = late_call(&w, &policy, &late);
        let wait = waiting(second.next());
        drop(wait);
        drop(second);
        let s = late.queue.stats().counts();
        assert_eq!((s.left, s.now), (1, 0));
        // The container that frees finds nobody to hand to.
        drop(first.answered(StatusCode::OK, None));
        assert_eq!(late.queue.stats().counts().handed_warm, 0);
    }

    #[test]
    fn without_late_binding_a_full_node_still_gets_the_call() {
        let w = world(1);
        let policy = crate::route::bounded::Bounded::new(1.25, 1, 1);
        let rules =
            |late| Rules { policy: &policy, suspects: &w.suspects, budget: &w.budget, retry_idempotent: false, late };
        let obs = || w.obs.start(POST, "/r/app/fn", |_| None, "127.0.0.1:1".parse().unwrap(), Instant::now());
        let mut first = Call::new(rules(None), &w.snap, key(1).1, bodiless(&POST), obs());
        send(first.next());
        let mut second = Call::new(rules(None), &w.snap, key(1).1, bodiless(&POST), obs());
        send(second.next());
    }
}
