//! Kubernetes mode (`-db=k8s`): the node set is the Fn pods that `-label-selector` selects in
//! `-namespace`, kept current by a watch on the API server. Each balancer watches on its own; no
//! database is shared.
//!
//! A pod is a node (`podIP:-target-port`) while it is `Running`, has a pod IP, is not being deleted
//! (no `deletionTimestamp`) and its `Ready` condition is not `False`. Readiness counts because it is
//! what a Kubernetes Service would honour: a pod whose own readiness probe fails, or that is being
//! drained, gets no traffic from us either. A pod that reports no `Ready` condition at all is taken
//! on its phase alone. fnlb health-checks every node itself in any case.
//!
//! Configuration comes from `KUBECONFIG` / `~/.kube/config` when present, else from the pod's
//! service account (in-cluster). The namespace defaults to the service account's own (or the
//! kubeconfig context's, else `default`).
//!
//! Start-up lists the pods once and opens one watch, so that a missing RBAC rule or an unreachable
//! API server ends the process at once with a message saying what is wrong; the balancer then
//! starts with its nodes known. After that, kube-runtime's `watcher` keeps the set current: a watch
//! that ends is resumed from the last resource version; one that has expired (`410 Gone`, as an
//! `ERROR` event or as the HTTP status) re-lists. Errors are retried with backoff (0.8 s doubling to
//! 30 s), and meanwhile the last known set keeps routing.
//!
//! The management API cannot add or remove nodes in this mode: the [`Store`] answers
//! [`StoreError::ReadOnly`] (409).
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tracing::{debug, info, warn};

use super::{BoxFuture, Store, StoreError};
use crate::config::Config;
use crate::node::manager::NodesHandle;
use crate::node::NodeAddr;

/// How long start-up may wait for the API server to answer the first list and watch.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Delay before a fresh watcher after an expired list or watch (doubling up to the maximum).
const RESTART_MIN: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(30);

/// What a pod is to the balancer: a node, or the reason it is not one.
pub(crate) type Verdict = Result<NodeAddr, String>;

/// Decides whether a pod is a node: `Running`, with a pod IP, not being deleted, and not
/// reported un-ready.
pub(crate) fn pod_node(pod: &Pod, port: u16) -> Verdict {
    if pod.metadata.deletion_timestamp.is_some() {
        return Err("terminating".into());
    }
    let Some(status) = &pod.status else {
        return Err("no status yet".into());
    };
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    if phase != "Running" {
        return Err(format!("phase {phase}"));
    }
    let not_ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "False");
    if not_ready {
        return Err("not ready".into());
    }
    let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
        return Err("no pod IP yet".into());
    };
    let ip: IpAddr = ip.parse().map_err(|_| format!("pod IP {ip:?} is not an IP address"))?;
    // SocketAddr's form brackets IPv6: [fd00::1]:8080.
    NodeAddr::parse(&SocketAddr::new(ip, port).to_string()).map_err(|e| format!("pod IP {ip}: {e}"))
}

/// The Kubernetes node source: answers the management API (read-only) and runs the watch.
pub(crate) struct K8sSource {
    api: Api<Pod>,
    /// The client, for the balancer's own pods (its own namespace, which may differ).
    client: kube::Client,
    /// The balancer's own namespace: the service account's, or the kubeconfig context's.
    own_namespace: String,
    namespace: String,
    selector: String,
    port: u16,
    server: String,
    /// The pods seen at start-up, handed to the watch loop.
    initial: Mutex<Option<BTreeMap<String, Verdict>>>,
    /// The node set last published, for [`Store::list`].
    current: Mutex<Vec<NodeAddr>>,
}

impl K8sSource {
    /// Loads the client configuration, lists the selected pods once and checks that they may be
    /// watched. Errors are one line saying what to fix (a missing RBAC rule names the rule).
    pub(crate) async fn connect(cfg: &Config) -> Result<K8sSource, String> {
        let kube_cfg = kube::Config::infer().await.map_err(|e| {
            format!(
                "-db=k8s: no Kubernetes configuration: not running in a pod with a service account, and \
                 no usable kubeconfig (KUBECONFIG or ~/.kube/config): {}",
                chain(&e)
            )
        })?;
        let own_namespace = kube_cfg.default_namespace.clone();
        let namespace = cfg.namespace.clone().unwrap_or_else(|| own_namespace.clone());
        let server = kube_cfg.cluster_url.to_string();
        let client = kube::Client::try_from(kube_cfg)
            .map_err(|e| format!("-db=k8s: cannot build a client for the API server at {server}: {}", chain(&e)))?;
        let source = K8sSource {
            api: Api::namespaced(client.clone(), &namespace),
            client,
            own_namespace,
            namespace,
            selector: cfg.label_selector.clone(),
            port: cfg.target_port,
            server,
            initial: Mutex::new(None),
            current: Mutex::new(Vec::new()),
        };
        info!(
            server = %source.server,
            namespace = %source.namespace,
            selector = %source.selector,
            target_port = source.port,
            "Kubernetes mode: Fn pods are the nodes"
        );
        if source.selector.is_empty() {
            warn!(
                namespace = %source.namespace,
                "-label-selector is empty: every pod of the namespace is taken for an Fn node, this \
                 balancer's own pods included; set -label-selector (e.g. app=fn,role=fn-service)"
            );
        }
        let pods = tokio::time::timeout(STARTUP_TIMEOUT, source.preflight()).await.map_err(|_| {
            format!(
                "-db=k8s: the Kubernetes API server at {} did not answer within {}s",
                source.server,
                STARTUP_TIMEOUT.as_secs()
            )
        })??;
        let mut tracker = Tracker::default();
        tracker.replace(pods);
        let nodes = tracker.node_set();
        info!(pods = tracker.pods.len(), nodes = nodes.len(), "Kubernetes: initial pod list");
        *source.current.lock().unwrap() = nodes;
        *source.initial.lock().unwrap() = Some(tracker.pods);
        Ok(source)
    }

    fn list_params(&self) -> ListParams {
        let lp = ListParams::default();
        if self.selector.is_empty() {
            lp
        } else {
            lp.labels(&self.selector)
        }
    }

    /// One list (the initial pods) and one watch opened and closed, each failure explained.
    async fn preflight(&self) -> Result<BTreeMap<String, Verdict>, String> {
        let list =
            self.api.list(&self.list_params()).await.map_err(|e| format!("-db=k8s: {}", self.explain(&e, "list")))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let mut wp = WatchParams::default().timeout(1);
        if !self.selector.is_empty() {
            wp = wp.labels(&self.selector);
        }
        match self.api.watch(&wp, &version).await {
            Ok(stream) => drop(stream),
            // Expired already: the watch is allowed, which is all this checks.
            Err(kube::Error::Api(s)) if s.code == 410 => {}
            Err(e) => return Err(format!("-db=k8s: {}", self.explain(&e, "watch"))),
        }
        Ok(list.items.iter().map(|p| (pod_name(p), pod_node(p, self.port))).collect())
    }

    /// A list or watch failure in words: which RBAC rule is missing, bad credentials, or no server.
    fn explain(&self, err: &kube::Error, verb: &str) -> String {
        let ns = &self.namespace;
        match err {
            kube::Error::Api(s) if s.code == 403 => format!(
                "forbidden to {verb} pods in namespace {ns:?}: the balancer's service account \
                 needs a Role in {ns:?} with the rule `apiGroups: [\"\"], resources: [\"pods\"], verbs: \
                 [\"get\", \"list\", \"watch\"]` and a RoleBinding to it (see deploy/kubernetes/10-rbac.yaml); \
                 the API server said: {}",
                s.message
            ),
            kube::Error::Api(s) if s.code == 401 => format!(
                "the API server at {} rejected the credentials (401 Unauthorized) on {verb} pods: {}",
                self.server, s.message
            ),
            kube::Error::Api(s) => format!(
                "{verb} pods in namespace {ns:?}: the API server at {} answered {} {}: {}",
                self.server, s.code, s.reason, s.message
            ),
            other => format!(
                "cannot {verb} pods in namespace {ns:?}: the API server at {} is unreachable: {}",
                self.server,
                chain(other)
            ),
        }
    }

    /// Keeps the node set equal to the selected pods, forever. Every change goes to the manager
    /// at once and is logged pod by pod.
    pub(crate) async fn watch(self: Arc<Self>, nodes: NodesHandle) {
        let mut tracker =
            Tracker { pods: self.initial.lock().unwrap().take().unwrap_or_default(), ..Tracker::default() };
        tracker.published = tracker.node_set();
        let mut restart_delay = RESTART_MIN;
        loop {
            let mut config = watcher::Config::default();
            if !self.selector.is_empty() {
                config = config.labels(&self.selector);
            }
            let mut stream = std::pin::pin!(watcher::watcher(self.api.clone(), config).default_backoff());
            // Objects of a (re-)list, applied together when it is complete.
            let mut relist: Option<BTreeMap<String, Verdict>> = None;
            let mut failing = false;
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(event) => event,
                    Err(error) => {
                        if expired(&error) {
                            // kube's watcher would retry the same resource version forever.
                            info!("Kubernetes: resource version expired (410 Gone); re-listing pods");
                            break;
                        }
                        if matches!(&error, watcher::Error::WatchError(s) if s.code == 410) {
                            // An ERROR event: the watcher re-lists by itself.
                            info!("Kubernetes: watch expired (410 Gone); re-listing pods");
                            continue;
                        }
                        if !failing {
                            warn!(
                                error = %self.describe_watch_error(&error),
                                nodes = tracker.published.len(),
                                "Kubernetes watch failed; retrying with backoff, routing with the last known pods"
                            );
                            failing = true;
                        } else {
                            debug!(error = %chain(&error), "Kubernetes watch still failing");
                        }
                        continue;
                    }
                };
                let progressed = match event {
                    Event::Init => {
                        relist = Some(BTreeMap::new());
                        false
                    }
                    Event::InitApply(pod) => {
                        relist.get_or_insert_with(BTreeMap::new).insert(pod_name(&pod), pod_node(&pod, self.port));
                        false
                    }
                    Event::InitDone => {
                        tracker.replace(relist.take().unwrap_or_default());
                        true
                    }
                    Event::Apply(pod) => {
                        tracker.update(pod_name(&pod), Some(pod_node(&pod, self.port)));
                        true
                    }
                    Event::Delete(pod) => {
                        tracker.update(pod_name(&pod), None);
                        true
                    }
                };
                if progressed {
                    if failing {
                        info!(pods = tracker.pods.len(), "Kubernetes watch working again");
                        failing = false;
                    }
                    restart_delay = RESTART_MIN;
                    self.publish(&mut tracker, &nodes);
                }
            }
            tokio::time::sleep(restart_delay).await;
            restart_delay = (restart_delay * 2).min(RESTART_MAX);
        }
    }

    /// Hands the node set to the manager when it changed.
    fn publish(&self, tracker: &mut Tracker, nodes: &NodesHandle) {
        let set = tracker.node_set();
        if set == tracker.published {
            return;
        }
        info!(nodes = set.len(), "Kubernetes: node set changed");
        // No local mutations happen in this mode, so the current sequence is never stale.
        nodes.set_desired(set.clone(), nodes.mutation_seq());
        *self.current.lock().unwrap() = set.clone();
        tracker.published = set;
    }

    fn describe_watch_error(&self, err: &watcher::Error) -> String {
        let kube_err = match err {
            watcher::Error::InitialListFailed(e) => Some((e, "list")),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => Some((e, "watch")),
            _ => None,
        };
        match kube_err {
            Some((e, verb)) => self.explain(e, verb),
            None => chain(err),
        }
    }
}

/// Labels that differ between pods of one balancer workload (per revision, per pod): not part of
/// the default balancer selector.
const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// A balancer pod counts while it is Running, not being deleted, and reports Ready `True`:
/// what a Service would send traffic to.
pub(crate) fn pod_counts(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The selector of a pod's workload: its labels, without the per-pod ones, as `k=v,k=v`.
pub(crate) fn selector_of(labels: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<String> =
        labels.iter().filter(|(k, _)| !PER_POD_LABELS.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect();
    parts.sort();
    parts.join(",")
}

impl K8sSource {
    /// The selector of this balancer's pods: `flag` when set, else the labels of its own pod
    /// (`POD_NAME`, else the host name, in its own namespace). `Err` says why it is not known.
    pub(crate) async fn balancer_selector(&self, flag: &str) -> Result<String, String> {
        if !flag.is_empty() {
            return Ok(flag.to_owned());
        }
        let name = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|n| !n.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned()))
            .ok_or("neither POD_NAME nor a host name is set")?;
        let own: Api<Pod> = Api::namespaced(self.client.clone(), &self.own_namespace);
        let pod = tokio::time::timeout(STARTUP_TIMEOUT, own.get(&name))
            .await
            .map_err(|_| format!("reading the own pod {name:?}: no answer within {}s", STARTUP_TIMEOUT.as_secs()))?
            .map_err(|e| {
                format!("reading the own pod {name:?} in namespace {:?}: {}", self.own_namespace, chain(&e))
            })?;
        let selector = selector_of(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()));
        if selector.is_empty() {
            return Err(format!("the own pod {name:?} has no labels"));
        }
        Ok(selector)
    }

    /// Sets `count` to the Ready pods `selector` selects in the own namespace, every `interval`
    /// (from the API server's cache: `resourceVersion=0`), forever. A failed list keeps the last
    /// count, logged once per outage.
    pub(crate) async fn count_balancers(
        self: Arc<Self>,
        selector: String,
        count: crate::route::Balancers,
        interval: Duration,
    ) {
        let own: Api<Pod> = Api::namespaced(self.client.clone(), &self.own_namespace);
        let lp = ListParams::default().labels(&selector).match_any();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        info!(namespace = %self.own_namespace, selector = %selector, "counting balancers by their Ready pods");
        loop {
            tick.tick().await;
            match tokio::time::timeout(interval.max(Duration::from_secs(5)), own.list(&lp)).await {
                Ok(Ok(list)) => {
                    if failing {
                        info!("Kubernetes: counting balancer pods works again");
                        failing = false;
                    }
                    // This balancer is serving, so at least one; a pod not Ready yet may be us.
                    let n =
                        u32::try_from(list.items.iter().filter(|p| pod_counts(p)).count()).unwrap_or(u32::MAX).max(1);
                    let before = count.get();
                    if n != before {
                        info!(balancers = n, before, "balancers sharing the nodes");
                    }
                    count.set(n);
                }
                result => {
                    if !failing {
                        let error = match result {
                            Ok(Err(e)) => self.explain(&e, "list"),
                            _ => "no answer in time".to_owned(),
                        };
                        warn!(%error, balancers = count.get(), "Kubernetes: cannot count balancer pods; keeping the last count");
                        failing = true;
                    }
                }
            }
        }
    }
}

impl Store for K8sSource {
    fn list(&self) -> BoxFuture<'_, Result<Vec<NodeAddr>, StoreError>> {
        let nodes = self.current.lock().unwrap().clone();
        Box::pin(async move { Ok(nodes) })
    }

    fn add<'a>(&'a self, _node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::ReadOnly) })
    }

    fn remove<'a>(&'a self, _node: &'a NodeAddr) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::ReadOnly) })
    }
}

/// The pods known and what each is, plus the node set last handed to the manager.
#[derive(Default)]
struct Tracker {
    pods: BTreeMap<String, Verdict>,
    published: Vec<NodeAddr>,
}

impl Tracker {
    /// Sorted, without duplicates (host-network pods may share an address).
    fn node_set(&self) -> Vec<NodeAddr> {
        let set: BTreeSet<&NodeAddr> = self.pods.values().filter_map(|v| v.as_ref().ok()).collect();
        set.into_iter().cloned().collect()
    }

    /// One pod changed (`None`: deleted).
    fn update(&mut self, name: String, verdict: Option<Verdict>) {
        let old = match verdict {
            Some(v) => self.pods.insert(name.clone(), v),
            None => self.pods.remove(&name),
        };
        log_transition(&name, old.as_ref(), self.pods.get(&name));
    }

    /// A complete list replaces what was known; pods missing from it are gone.
    fn replace(&mut self, pods: BTreeMap<String, Verdict>) {
        let names: BTreeSet<&String> = self.pods.keys().chain(pods.keys()).collect();
        for name in names {
            log_transition(name, self.pods.get(name), pods.get(name));
        }
        self.pods = pods;
    }
}

/// Logs a pod joining or leaving the node set; other changes (status updates of a pod that stays
/// what it was) are not worth a line.
fn log_transition(pod: &str, old: Option<&Verdict>, new: Option<&Verdict>) {
    match (old, new) {
        (Some(Ok(a)), Some(Ok(b))) if a == b => {}
        (Some(Ok(a)), Some(Ok(b))) => info!(pod, from = %a, to = %b, "Kubernetes: pod moved"),
        (_, Some(Ok(node))) => info!(pod, node = %node, "Kubernetes: pod is a node"),
        (Some(Ok(node)), Some(Err(why))) => info!(pod, node = %node, reason = %why, "Kubernetes: pod left the nodes"),
        (Some(Ok(node)), None) => info!(pod, node = %node, "Kubernetes: pod deleted; node left"),
        (None, Some(Err(why))) => debug!(pod, reason = %why, "Kubernetes: pod seen, not a node yet"),
        (Some(Err(a)), Some(Err(b))) if a != b => debug!(pod, reason = %b, "Kubernetes: pod still not a node"),
        _ => {}
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// A list or watch whose resource version the API server no longer has: start over.
fn expired(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// An error with its causes, `outer: inner: innermost` (kube's own text often hides the cause).
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(phase: &str, ip: Option<&str>, ready: Option<bool>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("fn-1".into()), ..ObjectMeta::default() },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: ip.map(Into::into),
                conditions: ready.map(|r| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: if r { "True" } else { "False" }.into(),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn running_pod_with_ip_is_a_node() {
        assert_eq!(pod_node(&pod("Running", Some("10.1.2.3"), Some(true)), 8080).unwrap(), "10.1.2.3:8080");
        // No Ready condition reported: the phase decides.
        assert_eq!(pod_node(&pod("Running", Some("10.1.2.3"), None), 9000).unwrap(), "10.1.2.3:9000");
        assert_eq!(pod_node(&pod("Running", Some("fd00::7"), Some(true)), 8080).unwrap(), "[fd00::7]:8080");
    }

    #[test]
    fn other_pods_are_not_nodes() {
        for (p, why) in [
            (pod("Pending", Some("10.1.2.3"), None), "phase Pending"),
            (pod("Succeeded", Some("10.1.2.3"), None), "phase Succeeded"),
            (pod("Failed", None, None), "phase Failed"),
            (pod("Running", None, Some(true)), "no pod IP yet"),
            (pod("Running", Some(""), Some(true)), "no pod IP yet"),
            (pod("Running", Some("10.1.2.3"), Some(false)), "not ready"),
            (Pod { status: None, ..pod("Running", None, None) }, "no status yet"),
        ] {
            assert_eq!(pod_node(&p, 8080).unwrap_err(), why);
        }
        let mut terminating = pod("Running", Some("10.1.2.3"), Some(true));
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(pod_node(&terminating, 8080).unwrap_err(), "terminating");
        assert!(pod_node(&pod("Running", Some("not-an-ip"), None), 8080).is_err());
    }

    #[test]
    fn balancer_selector_drops_per_pod_labels() {
        let labels = BTreeMap::from(
            [("role", "fn-lb"), ("app", "fn"), ("controller-revision-hash", "7c9d"), ("pod-template-generation", "2")]
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(selector_of(&labels), "app=fn,role=fn-lb");
        assert_eq!(selector_of(&BTreeMap::new()), "");
    }

    #[test]
    fn only_ready_running_pods_count_as_balancers() {
        assert!(pod_counts(&pod("Running", Some("10.1.2.3"), Some(true))));
        // Unlike a node, a balancer with no Ready condition is not counted: it may not serve yet.
        assert!(!pod_counts(&pod("Running", Some("10.1.2.3"), None)));
        assert!(!pod_counts(&pod("Running", Some("10.1.2.3"), Some(false))));
        assert!(!pod_counts(&pod("Pending", None, Some(true))));
        let mut terminating = pod("Running", Some("10.1.2.3"), Some(true));
        terminating.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(!pod_counts(&terminating));
    }

    #[test]
    fn tracker_dedups_and_forgets_what_a_relist_misses() {
        let addr = |s: &str| NodeAddr::parse(s).unwrap();
        let mut t = Tracker::default();
        t.update("a".into(), Some(Ok(addr("10.0.0.1:8080"))));
        t.update("b".into(), Some(Ok(addr("10.0.0.1:8080"))));
        t.update("c".into(), Some(Err("phase Pending".into())));
        assert_eq!(t.node_set(), vec![addr("10.0.0.1:8080")]);
        t.replace(BTreeMap::from([("d".to_string(), Ok(addr("10.0.0.4:8080")))]));
        assert_eq!(t.node_set(), vec![addr("10.0.0.4:8080")]);
        t.update("d".into(), None);
        assert!(t.node_set().is_empty());
    }
}
