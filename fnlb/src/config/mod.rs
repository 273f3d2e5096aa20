//! The command line: flags (in Go's `-flag` spelling too), their `FNLB_*` environment variables,
//! defaults and validation, turned into one immutable [`Config`].
//!
//! Nothing here starts anything: parsing is pure apart from resolving listen host names, reading
//! the environment and reading the `-tls-cert`/`-tls-key` files. A bad value is a one-line error naming the flag as Go spells it, exit code 2.
//!
//! Adding a flag: a field in `Flags` (with `env = "FNLB_<NAME>"` and a default), a field in
//! [`Config`], and one line in `Config::from_flags` with a parser from [`parse`].
pub mod parse;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};

use crate::discovery::db_url::{redact_url, DbUrl};
use crate::node::NodeAddr;
use crate::telemetry::LogFormat;
use parse::*;

/// Routing policies `-policy` accepts (the one list lives with the policies).
pub(crate) use crate::route::POLICIES;

/// Everything fnlb was asked to do, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    pub mgmt_listen: SocketAddr,
    pub nodes: Vec<NodeAddr>,
    pub db: DbUrl,
    pub hc_interval: Duration,
    pub hc_path: String,
    pub hc_unhealthy: u32,
    pub hc_healthy: u32,
    pub hc_timeout: Duration,
    pub min_api_version: semver::Version,
    /// `None`: wait for every in-flight request (the flag's `0`).
    pub shutdown_timeout: Option<Duration>,
    pub zipkin: Option<String>,
    /// `None`: the balancer's own namespace (the flag left empty).
    pub namespace: Option<String>,
    pub label_selector: String,
    pub target_port: u16,
    /// Worker threads, resolved: never 0.
    pub threads: usize,
    /// One of [`POLICIES`].
    pub policy: String,
    /// Concurrent calls a node runs well (`-node-capacity`).
    pub node_capacity: u32,
    /// Client and upstream timeouts and limits.
    pub limits: Limits,
    /// `-mgmt-token`: required on PUT/DELETE when set.
    pub mgmt_token: Option<String>,
    /// Balancers sharing the nodes (`-balancers`).
    pub balancers: u32,
    /// Bounded-load factor (`-load-factor`), > 1.
    pub load_factor: f64,
    /// `-log-format text|json`.
    pub log_format: LogFormat,
    /// `-access-log`: one log line per call.
    pub access_log: bool,
    /// `-tls-cert` and `-tls-key`, read and checked: every listener speaks TLS.
    pub tls: Option<crate::tls::ServerTls>,
    /// `-balancers` was given (flag or environment): the count is fixed, not counted live.
    pub balancers_fixed: bool,
    /// `-balancer-selector`: the balancers' own pods with `-db=k8s` (empty: the own pod's labels).
    pub balancer_selector: String,
    /// `-function-keys`: key calls by their Fn function, learned from the nodes' API.
    pub function_keys: bool,
}

impl Config {
    /// True when traffic and management share one listener (mgmt paths answered first).
    pub fn shares_listener(&self) -> bool {
        self.listen == self.mgmt_listen
    }
}

/// How the process should end instead of running: help, version, or a usage error.
///
/// `message` has no trailing newline; print it with `println!` when `stdout`, else `eprintln!`,
/// then exit with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliExit {
    pub code: i32,
    pub message: String,
    pub stdout: bool,
}

impl CliExit {
    fn usage(message: String) -> CliExit {
        CliExit { code: 2, message: format!("fnlb: {message}"), stdout: false }
    }
}

impl fmt::Display for CliExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliExit {}

/// The flags as clap sees them: raw strings, so that every value is validated below with an error
/// that names the flag in Go's spelling (clap's own messages are multi-line and say `--flag`).
#[derive(Debug, Parser)]
#[command(
    name = "fnlb",
    version,
    about = "A load balancer for Fn servers: routes each function to the node where it is hot.",
    after_help = "Flags may also be written Go's way (-nodes a:1,b:2 or -nodes=a:1,b:2).\n\
                  Each flag can be set by the environment variable shown; the flag wins.",
    args_override_self = true,
    color = clap::ColorChoice::Never
)]
struct Flags {
    /// Traffic address: :PORT (all interfaces), HOST:PORT or [IPv6]:PORT
    #[arg(long, env = "FNLB_LISTEN", default_value = ":8081", value_name = "ADDR")]
    listen: String,

    /// Management address; equal to -listen means one listener serves both
    #[arg(long, env = "FNLB_MGMT_LISTEN", default_value = ":8081", value_name = "ADDR")]
    mgmt_listen: String,

    /// Comma-separated host:port nodes added to the node store at start
    #[arg(long, env = "FNLB_NODES", default_value = "", value_name = "LIST")]
    nodes: String,

    /// Node store: sqlite3://:memory:, sqlite3:///abs/path.db, postgres://..., mysql://... or k8s
    #[arg(long, env = "FNLB_DB", default_value = "sqlite3://:memory:", value_name = "URL")]
    db: String,

    /// Seconds between health-check rounds and store reads (3, 0.5 or a Go duration: 500ms)
    #[arg(long, env = "FNLB_HC_INTERVAL", default_value = "3", value_name = "SECONDS")]
    hc_interval: String,

    /// Health-check path
    #[arg(long, env = "FNLB_HC_PATH", default_value = "/version", value_name = "PATH")]
    hc_path: String,

    /// Consecutive failed checks that take a healthy node out
    #[arg(long, env = "FNLB_HC_UNHEALTHY", default_value = "2", value_name = "N")]
    hc_unhealthy: String,

    /// Consecutive successful checks that bring an unhealthy node back
    #[arg(long, env = "FNLB_HC_HEALTHY", default_value = "1", value_name = "N")]
    hc_healthy: String,

    /// Seconds before a health check counts as failed
    #[arg(long, env = "FNLB_HC_TIMEOUT", default_value = "5", value_name = "SECONDS")]
    hc_timeout: String,

    /// Nodes whose /version is lower are unhealthy (semver)
    #[arg(long, env = "FNLB_MIN_API_VERSION", default_value = "0.0.235", value_name = "VERSION")]
    min_api_version: String,

    /// Seconds to drain in-flight requests on SIGTERM/SIGINT/SIGQUIT; 0 waits for all
    #[arg(long, env = "FNLB_SHUTDOWN_TIMEOUT", default_value = "0", value_name = "SECONDS")]
    shutdown_timeout: String,

    /// Zipkin collector URL for traces (empty: no tracing)
    #[arg(long, env = "FNLB_ZIPKIN", default_value = "", value_name = "URL")]
    zipkin: String,

    /// Kubernetes namespace to watch with -db=k8s (empty: the balancer's own)
    #[arg(long, env = "FNLB_NAMESPACE", default_value = "", value_name = "NAME")]
    namespace: String,

    /// Kubernetes label selector for Fn pods
    #[arg(long, env = "FNLB_LABEL_SELECTOR", default_value = "", value_name = "SELECTOR")]
    label_selector: String,

    /// Port on each selected pod
    #[arg(long, env = "FNLB_TARGET_PORT", default_value = "8080", value_name = "PORT")]
    target_port: String,

    /// Worker threads (0: one per CPU)
    #[arg(long, env = "FNLB_THREADS", default_value = "0", value_name = "N")]
    threads: String,

    /// Routing policy (the names are filled in from `route::POLICIES` by `command()`)
    #[arg(long, env = "FNLB_POLICY", default_value = "bounded", value_name = "NAME")]
    policy: String,

    /// Concurrent calls one Fn node runs well (its container slots); Fn nodes do not advertise it
    #[arg(long, env = "FNLB_NODE_CAPACITY", default_value = "64", value_name = "N")]
    node_capacity: String,

    /// Balancers sharing the same nodes; each sees only its own calls, so it uses 1/N of a node
    #[arg(long, env = "FNLB_BALANCERS", default_value = "1", value_name = "N")]
    balancers: String,

    /// Bounded policy: a node takes at most this multiple of the mean load before a key spills
    #[arg(long, env = "FNLB_LOAD_FACTOR", default_value = "1.25", value_name = "F")]
    load_factor: String,

    /// Log lines as text or json (one object per line)
    #[arg(long, env = "FNLB_LOG_FORMAT", default_value = "text", value_name = "FORMAT")]
    log_format: String,

    /// Log one line per call (method, path, node, status, duration, wait); Go bool: -access-log or -access-log=false
    #[arg(
        long,
        env = "FNLB_ACCESS_LOG",
        default_value = "false",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    access_log: String,

    /// Seconds a client has to send a complete request head once its connection is ready for one (slowloris)
    #[arg(long, env = "FNLB_CLIENT_HEADER_TIMEOUT", default_value = "10", value_name = "SECONDS")]
    client_header_timeout: String,

    /// Seconds an idle keep-alive client connection is kept open
    #[arg(long, env = "FNLB_KEEPALIVE_TIMEOUT", default_value = "75", value_name = "SECONDS")]
    keepalive_timeout: String,

    /// Seconds a client may leave a request body it is sending without a byte before its connection is closed
    #[arg(long, env = "FNLB_CLIENT_BODY_TIMEOUT", default_value = "60", value_name = "SECONDS")]
    client_body_timeout: String,

    /// Seconds a client may leave an answer unread (no write to it succeeds) before its connection is closed
    #[arg(long, env = "FNLB_SEND_TIMEOUT", default_value = "60", value_name = "SECONDS")]
    send_timeout: String,

    /// Resend bodiless GET/HEAD/OPTIONS calls to another node after a node failed under them (nginx's proxy_next_upstream); off: a call is never sent twice; Go bool
    #[arg(
        long,
        env = "FNLB_RETRY_IDEMPOTENT",
        default_value = "false",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    retry_idempotent: String,

    /// Late binding: a call no node can take warm or with room waits at the balancer (up to 4 s) for a container of its function or a free slot, instead of going cold onto a full node; refused with 503 and Retry-After when it cannot be placed in time (bounded policy only); Go bool
    #[arg(
        long,
        env = "FNLB_LATE_BINDING",
        default_value = "true",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    late_binding: String,

    /// Seconds to connect to a node before the call moves to the next node
    #[arg(long, env = "FNLB_UPSTREAM_CONNECT_TIMEOUT", default_value = "2", value_name = "SECONDS")]
    upstream_connect_timeout: String,

    /// Seconds a node has to start answering a call (504 after), and may leave an upload untaken
    /// (504) or its answer's body unsent (cut off); 0 waits as long as it takes
    #[arg(long, env = "FNLB_UPSTREAM_TIMEOUT", default_value = "300", value_name = "SECONDS")]
    upstream_timeout: String,

    /// Largest request head (request line and headers) accepted from a client, in bytes
    #[arg(long, env = "FNLB_MAX_HEADER_SIZE", default_value = "65536", value_name = "BYTES")]
    max_header_size: String,

    /// Client connections served at once; more wait to be accepted
    #[arg(long, env = "FNLB_MAX_CONNECTIONS", default_value = "10000", value_name = "N")]
    max_connections: String,

    /// Largest management request body, in bytes (413 above)
    #[arg(long, env = "FNLB_MGMT_MAX_BODY", default_value = "65536", value_name = "BYTES")]
    mgmt_max_body: String,

    /// Share of nodes that may be skipped as unreachable at once (passive outlier detection)
    #[arg(long, env = "FNLB_MAX_EJECTED", default_value = "0.5", value_name = "FRACTION")]
    max_ejected: String,

    /// Token that PUT and DELETE on /1/lb/nodes must present as `Authorization: Bearer TOKEN`
    #[arg(long, env = "FNLB_MGMT_TOKEN", default_value = "", value_name = "TOKEN")]
    mgmt_token: String,

    /// PEM certificate chain: with -tls-key, every listener speaks TLS (HTTP/2 and HTTP/1.1 by ALPN)
    #[arg(long, env = "FNLB_TLS_CERT", default_value = "", value_name = "PATH")]
    tls_cert: String,

    /// PEM private key of -tls-cert (PKCS#8, RSA or EC)
    #[arg(long, env = "FNLB_TLS_KEY", default_value = "", value_name = "PATH")]
    tls_key: String,

    /// With -db=k8s and no -balancers: label selector of the balancers' own pods, whose Ready pods are counted (empty: the own pod's labels)
    #[arg(long, env = "FNLB_BALANCER_SELECTOR", default_value = "", value_name = "SELECTOR")]
    balancer_selector: String,

    /// Key each call by its Fn function (trigger paths learned from the nodes' /v2 API) rather than by its path; Go bool
    #[arg(
        long,
        env = "FNLB_FUNCTION_KEYS",
        default_value = "true",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    function_keys: String,
}

/// The clap command, with what applies to every flag set in one place.
fn command() -> clap::Command {
    // No wrapping to the terminal's width: one line per flag, the same everywhere (and the same
    // whether or not another crate in the build turned on clap's `wrap_help`).
    Flags::command()
        .term_width(0)
        .mut_args(|arg| {
            if !arg.get_action().takes_values() {
                return arg;
            }
            // `-hc-interval -1` must reach our validation ("must not be negative") rather than be
            // taken for a flag. `--help` must not print the environment's values: FNLB_DB may hold
            // a password.
            arg.allow_hyphen_values(true).hide_env_values(true)
        })
        .mut_arg("policy", |arg| arg.help(format!("Routing policy: {}", POLICIES.join(", "))))
}

/// Parses the command line (`args[0]` is the program name) and the `FNLB_*` environment.
pub fn parse_args(args: Vec<OsString>) -> Result<Config, CliExit> {
    parse_with(command(), args)
}

fn parse_with(cmd: clap::Command, args: Vec<OsString>) -> Result<Config, CliExit> {
    let names = FlagNames::of(&cmd);
    let (args, unknown) = scan_go_args(args, &names);
    if let Some(flag) = unknown {
        // Escaped: an argument may carry newlines or terminal escapes; the error stays one line.
        return Err(CliExit::usage(format!("flag provided but not defined: {} (see -help)", flag.escape_debug())));
    }
    let matches = cmd.clone().try_get_matches_from(args).map_err(clap_exit)?;
    let flags = Flags::from_arg_matches(&matches).map_err(clap_exit)?;
    Config::from_flags(&flags, &Sources { cmd: &cmd, matches: &matches })
}

impl Config {
    fn from_flags(f: &Flags, src: &Sources<'_>) -> Result<Config, CliExit> {
        let config = Config {
            listen: src.parse("listen", &f.listen, parse_listen_addr)?,
            mgmt_listen: src.parse("mgmt-listen", &f.mgmt_listen, parse_listen_addr)?,
            nodes: src.parse("nodes", &f.nodes, parse_nodes)?,
            db: src.parse_secret("db", &f.db, parse_db)?,
            hc_interval: src.parse("hc-interval", &f.hc_interval, parse_positive_seconds)?,
            hc_path: src.parse("hc-path", &f.hc_path, parse_hc_path)?,
            hc_unhealthy: src.parse("hc-unhealthy", &f.hc_unhealthy, parse_count)?,
            hc_healthy: src.parse("hc-healthy", &f.hc_healthy, parse_count)?,
            hc_timeout: src.parse("hc-timeout", &f.hc_timeout, parse_positive_seconds)?,
            min_api_version: src.parse("min-api-version", &f.min_api_version, parse_version)?,
            shutdown_timeout: src
                .parse("shutdown-timeout", &f.shutdown_timeout, parse_seconds)
                .map(|d| (!d.is_zero()).then_some(d))?,
            zipkin: src.parse_secret("zipkin", &f.zipkin, parse_zipkin)?,
            namespace: src.parse("namespace", &f.namespace, parse_namespace)?,
            label_selector: src.value("label-selector", &f.label_selector),
            target_port: src.parse("target-port", &f.target_port, parse_port)?,
            threads: src.parse("threads", &f.threads, parse_threads).map(resolve_threads)?,
            policy: src.parse("policy", &f.policy, parse_policy)?,
            node_capacity: src.parse("node-capacity", &f.node_capacity, parse_count)?,
            limits: Limits {
                client_header_timeout: src.parse(
                    "client-header-timeout",
                    &f.client_header_timeout,
                    parse_positive_seconds,
                )?,
                keepalive_timeout: src.parse("keepalive-timeout", &f.keepalive_timeout, parse_positive_seconds)?,
                client_body_timeout: src.parse(
                    "client-body-timeout",
                    &f.client_body_timeout,
                    parse_positive_seconds,
                )?,
                send_timeout: src.parse("send-timeout", &f.send_timeout, parse_positive_seconds)?,
                retry_idempotent: src.parse("retry-idempotent", &f.retry_idempotent, parse_bool)?,
                late_binding: src.parse("late-binding", &f.late_binding, parse_bool)?,
                upstream_connect_timeout: src.parse(
                    "upstream-connect-timeout",
                    &f.upstream_connect_timeout,
                    parse_positive_seconds,
                )?,
                upstream_timeout: src
                    .parse("upstream-timeout", &f.upstream_timeout, parse_seconds)
                    .map(|d| (!d.is_zero()).then_some(d))?,
                max_header_size: src.parse("max-header-size", &f.max_header_size, parse_header_size)?,
                max_connections: src.parse("max-connections", &f.max_connections, parse_count)? as usize,
                mgmt_max_body: src.parse("mgmt-max-body", &f.mgmt_max_body, parse_count)? as usize,
                max_ejected: src.parse("max-ejected", &f.max_ejected, parse_fraction)?,
            },
            mgmt_token: src.parse_secret("mgmt-token", &f.mgmt_token, parse_token)?,
            balancers: src.parse("balancers", &f.balancers, parse_count)?,
            load_factor: src.parse("load-factor", &f.load_factor, parse_load_factor)?,
            log_format: src.parse("log-format", &f.log_format, parse_log_format)?,
            access_log: src.parse("access-log", &f.access_log, parse_bool)?,
            tls: tls_files(src, &f.tls_cert, &f.tls_key)?,
            balancers_fixed: src.is_given("balancers", &f.balancers),
            balancer_selector: src.value("balancer-selector", &f.balancer_selector),
            function_keys: src.parse("function-keys", &f.function_keys, parse_bool)?,
        };
        check_listeners(&config)?;
        check_nodes(&config, src)?;
        Ok(config)
    }
}

/// `-listen :8081 -mgmt-listen 127.0.0.1:8081` cannot both bind; say so now, naming the flags,
/// rather than fail later with "address in use".
fn check_listeners(c: &Config) -> Result<(), CliExit> {
    let (a, b) = (c.listen, c.mgmt_listen);
    if a != b && a.port() == b.port() && a.port() != 0 && (a.ip().is_unspecified() || b.ip().is_unspecified()) {
        return Err(CliExit::usage(format!(
            "-mgmt-listen {b} overlaps -listen {a}: give both the same address to share one \
             listener, or use another port"
        )));
    }
    Ok(())
}

/// A `-nodes` entry that is one of our own listeners would send every call back here: refused
/// now, by the test `PUT /1/lb/nodes` applies. (A listener on port 0 has no port yet; no node
/// matches it.)
fn check_nodes(c: &Config, src: &Sources<'_>) -> Result<(), CliExit> {
    let ours = [c.listen, c.mgmt_listen];
    for node in &c.nodes {
        node.refuse_loop(&ours).map_err(|why| src.invalid("nodes", &format!("{:?}", node.to_string()), why))?;
    }
    Ok(())
}

/// Where each value came from, for error messages and for treating an empty variable as unset.
struct Sources<'a> {
    cmd: &'a clap::Command,
    matches: &'a ArgMatches,
}

impl Sources<'_> {
    /// The value to parse: the flag's, else the variable's, else the default. An empty
    /// `FNLB_*` variable counts as unset (orchestrators often define variables empty).
    fn value(&self, flag: &str, raw: &str) -> String {
        let id = flag.replace('-', "_");
        if raw.is_empty() && self.is_from_env(&id) {
            let arg = self.cmd.get_arguments().find(|a| a.get_id() == id.as_str());
            if let Some(default) = arg.and_then(|a| a.get_default_values().first()) {
                return default.to_string_lossy().into_owned();
            }
        }
        raw.to_owned()
    }

    /// The flag was set on the command line, or by a non-empty variable.
    fn is_given(&self, flag: &str, raw: &str) -> bool {
        let id = flag.replace('-', "_");
        match self.matches.value_source(&id) {
            Some(ValueSource::CommandLine) => true,
            Some(ValueSource::EnvVariable) => !raw.is_empty(),
            _ => false,
        }
    }

    fn is_from_env(&self, id: &str) -> bool {
        self.matches.value_source(id) == Some(ValueSource::EnvVariable)
    }

    fn parse<T>(
        &self,
        flag: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Result<T, CliExit> {
        self.parse_shown(flag, raw, parse, |v| format!("{v:?}"))
    }

    /// Like `parse`, for values that may hold a password: errors show them redacted.
    fn parse_secret<T>(
        &self,
        flag: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Result<T, CliExit> {
        self.parse_shown(flag, raw, parse, |v| format!("{:?}", redact_url(v)))
    }

    fn parse_shown<T>(
        &self,
        flag: &'static str,
        raw: &str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
        show: impl FnOnce(&str) -> String,
    ) -> Result<T, CliExit> {
        let value = self.value(flag, raw);
        parse(&value).map_err(|e| self.invalid(flag, &show(&value), e))
    }

    /// `invalid value SHOWN for -FLAG (from FNLB_FLAG): WHY`.
    fn invalid(&self, flag: &str, shown: &str, why: impl fmt::Display) -> CliExit {
        let id = flag.replace('-', "_");
        let origin =
            if self.is_from_env(&id) { format!(" (from FNLB_{})", id.to_ascii_uppercase()) } else { String::new() };
        CliExit::usage(format!("invalid value {shown} for -{flag}{origin}: {why}"))
    }
}

/// Turns clap's outcome into ours: help and version go to stdout with code 0; errors become one
/// line in Go's words where Go has some.
fn clap_exit(err: clap::Error) -> CliExit {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            return CliExit { code: 0, message: err.render().to_string().trim_end().to_owned(), stdout: true }
        }
        ErrorKind::InvalidValue => {
            // Our values are free-form strings, so this is clap's "a value is required".
            if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
                let name = arg.split_whitespace().next().unwrap_or(arg);
                let name = name.strip_prefix('-').unwrap_or(name);
                return CliExit::usage(format!("flag needs an argument: {name}"));
            }
        }
        ErrorKind::UnknownArgument => {
            if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
                return CliExit::usage(format!("flag provided but not defined: {} (see -help)", arg.escape_debug()));
            }
        }
        _ => {}
    }
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    CliExit::usage(first.strip_prefix("error: ").unwrap_or(first).to_owned())
}

/// The long flag names the command knows, split by whether they take a value.
struct FlagNames {
    with_value: Vec<String>,
    switches: Vec<String>,
}

impl FlagNames {
    fn of(cmd: &clap::Command) -> FlagNames {
        let mut names = FlagNames { with_value: Vec::new(), switches: Vec::new() };
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            // A Go-style bool (`-access-log`, `-access-log=false`) takes its value only after `=`.
            if arg.get_action().takes_values() && !arg.is_require_equals_set() {
                names.with_value.push(long.to_owned());
            } else {
                names.switches.push(long.to_owned());
            }
        }
        // clap adds these when it builds the command; say them here so `-help` works either way.
        for builtin in ["help", "version"] {
            if !names.switches.iter().any(|s| s == builtin) {
                names.switches.push(builtin.to_owned());
            }
        }
        names
    }

    fn takes_value(&self, name: &str) -> Option<bool> {
        if self.with_value.iter().any(|n| n == name) {
            Some(true)
        } else if self.switches.iter().any(|n| n == name) {
            Some(false)
        } else {
            None
        }
    }
}

/// Rewrites Go's single-dash long flags (`-nodes a:1`, `-nodes=a:1`, `-help`) to clap's
/// double-dash form. Values are left alone: the argument after a flag that takes a value is that
/// value, even when it starts with `-` (as in Go), and nothing after `--` is touched. Unknown
/// single-dash words stay as they are (clap rejects them).
pub fn rewrite_go_args(args: Vec<OsString>) -> Vec<OsString> {
    scan_go_args(args, &FlagNames::of(&command())).0
}

/// [`rewrite_go_args`], also reporting the first flag that is not defined, in the user's spelling.
fn scan_go_args(args: Vec<OsString>, names: &FlagNames) -> (Vec<OsString>, Option<String>) {
    let mut out = Vec::with_capacity(args.len());
    let mut unknown = None;
    let mut args = args.into_iter();
    out.extend(args.next()); // the program name
    let mut value_next = false;
    for arg in args.by_ref() {
        if std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            break;
        }
        let (dashes, body) = if let Some(body) = text.strip_prefix("--") {
            ("--", body)
        } else if let Some(body) = text.strip_prefix('-') {
            ("-", body)
        } else {
            out.push(arg); // not a flag: clap reports it
            continue;
        };
        let (name, has_value) = match body.split_once('=') {
            Some((name, _)) => (name, true),
            None => (body, false),
        };
        match names.takes_value(name) {
            Some(takes_value) => {
                value_next = takes_value && !has_value;
                if dashes == "-" {
                    let mut long = OsString::from("-");
                    long.push(text);
                    out.push(long);
                } else {
                    out.push(arg);
                }
            }
            None => {
                // clap's own short flags, and a lone "-" (a value, for clap to refuse).
                let builtin_short = dashes == "-" && matches!(body, "h" | "V" | "");
                if !builtin_short && unknown.is_none() {
                    unknown = Some(text.to_owned());
                }
                out.push(arg);
            }
        }
    }
    out.extend(args);
    (out, unknown)
}

/// Timeouts and limits of the client and upstream sides (issue: never a hang, never unbounded).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub client_header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Longest pause between two reads of a request body the client is sending.
    pub client_body_timeout: Duration,
    /// Longest a write to a client may stay blocked (the client does not read).
    pub send_timeout: Duration,
    /// `-retry-idempotent`: bodiless GET/HEAD/OPTIONS may be resent after a node failed under them.
    pub retry_idempotent: bool,
    /// `-late-binding`: calls wait at the balancer at saturation (`route::wait`).
    pub late_binding: bool,
    pub upstream_connect_timeout: Duration,
    /// None: no limit.
    pub upstream_timeout: Option<Duration>,
    pub max_header_size: usize,
    pub max_connections: usize,
    pub mgmt_max_body: usize,
    pub max_ejected: f64,
}

/// `-tls-cert` and `-tls-key` go together. Both files are read now: a missing, unreadable or
/// mismatched file is a usage error naming its flag, not a failure at the first client.
fn tls_files(src: &Sources<'_>, cert: &str, key: &str) -> Result<Option<crate::tls::ServerTls>, CliExit> {
    use crate::tls::{ServerTls, TlsFile};
    let cert = src.parse("tls-cert", cert, parse_optional_path)?;
    let key = src.parse("tls-key", key, parse_optional_path)?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(CliExit::usage("-tls-cert needs -tls-key (its private key): give both, or neither".into()))
        }
        (None, Some(_)) => {
            return Err(CliExit::usage("-tls-key needs -tls-cert (its certificate): give both, or neither".into()))
        }
    };
    ServerTls::load(&cert, &key).map(Some).map_err(|(file, why)| {
        let (flag, path) = match file {
            TlsFile::Cert => ("tls-cert", &cert),
            TlsFile::Key => ("tls-key", &key),
        };
        src.invalid(flag, &format!("{:?}", path.display().to_string()), why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command without `FNLB_*` variables, so the developer's environment cannot leak in.
    fn hermetic() -> clap::Command {
        command().mut_args(|a| a.env(None::<&'static str>))
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        std::iter::once("fnlb").chain(list.iter().copied()).map(OsString::from).collect()
    }

    fn parse(list: &[&str]) -> Result<Config, CliExit> {
        parse_with(hermetic(), args(list))
    }

    fn error(list: &[&str]) -> String {
        let exit = parse(list).expect_err("should fail");
        assert_eq!(exit.code, 2, "{exit:?}");
        assert!(!exit.stdout);
        assert!(!exit.message.contains('\n'), "one line: {:?}", exit.message);
        exit.message
    }

    #[test]
    fn defaults_match_the_go_original() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8081".parse().unwrap());
        assert_eq!(c.mgmt_listen, "0.0.0.0:8081".parse().unwrap());
        assert!(c.shares_listener());
        assert!(c.nodes.is_empty());
        assert_eq!(c.db, DbUrl::SqliteMemory);
        assert_eq!(c.hc_interval, Duration::from_secs(3));
        assert_eq!(c.hc_path, "/version");
        assert_eq!(c.hc_unhealthy, 2);
        assert_eq!(c.hc_healthy, 1);
        assert_eq!(c.hc_timeout, Duration::from_secs(5));
        assert_eq!(c.min_api_version, semver::Version::new(0, 0, 235));
        assert_eq!(c.shutdown_timeout, None);
        assert_eq!(c.zipkin, None);
        assert_eq!(c.namespace, None);
        assert_eq!(c.label_selector, "");
        assert_eq!(c.target_port, 8080);
        assert!(c.threads >= 1);
        assert_eq!(c.policy, "bounded");
    }

    #[test]
    fn balancers_given_are_fixed_else_counted() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.balancers, c.balancers_fixed), (1, false));
        for list in [&["-balancers", "1"][..], &["-balancers=3"]] {
            assert!(parse(list).unwrap().balancers_fixed, "{list:?}");
        }
        assert_eq!(parse(&["-balancers=3"]).unwrap().balancers, 3);
        assert_eq!(parse(&["-balancer-selector", "app=fnlb"]).unwrap().balancer_selector, "app=fnlb");
        assert_eq!(parse(&[]).unwrap().balancer_selector, "");
    }

    #[test]
    fn function_keys_are_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().function_keys);
        assert!(parse(&["-function-keys"]).unwrap().function_keys);
        assert!(!parse(&["-function-keys=false"]).unwrap().function_keys);
        assert!(error(&["-function-keys=banana"]).contains("-function-keys"));
    }

    #[test]
    fn accepts_go_and_double_dash_spellings() {
        for list in [&["-nodes", "a:1,b:2"][..], &["-nodes=a:1,b:2"], &["--nodes", "a:1,b:2"], &["--nodes=a:1,b:2"]] {
            let c = parse(list).unwrap();
            assert_eq!(c.nodes, vec!["a:1", "b:2"], "{list:?}");
        }
    }

    #[test]
    fn parses_every_flag() {
        let c = parse(&[
            "-listen=127.0.0.1:9000",
            "-mgmt-listen",
            "[::1]:9001",
            "--db",
            "k8s",
            "-hc-interval",
            "500ms",
            "-hc-path=/health?x=1",
            "-hc-unhealthy=3",
            "-hc-healthy=4",
            "-hc-timeout=1.5",
            "-min-api-version=1.2.3-rc.1",
            "-shutdown-timeout=30",
            "-zipkin=http://zipkin:9411/api/v2/spans",
            "-namespace=fn",
            "-label-selector=app=fn,role!=lb",
            "-target-port=9090",
            "-threads=3",
            "-policy=least-conn",
        ])
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.mgmt_listen, "[::1]:9001".parse().unwrap());
        assert!(!c.shares_listener());
        assert_eq!(c.db, DbUrl::K8s);
        assert_eq!(c.hc_interval, Duration::from_millis(500));
        assert_eq!(c.hc_path, "/health?x=1");
        assert_eq!(c.hc_unhealthy, 3);
        assert_eq!(c.hc_healthy, 4);
        assert_eq!(c.hc_timeout, Duration::from_millis(1500));
        assert_eq!(c.min_api_version, semver::Version::parse("1.2.3-rc.1").unwrap());
        assert_eq!(c.shutdown_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.zipkin.as_deref(), Some("http://zipkin:9411/api/v2/spans"));
        assert_eq!(c.namespace.as_deref(), Some("fn"));
        assert_eq!(c.label_selector, "app=fn,role!=lb");
        assert_eq!(c.target_port, 9090);
        assert_eq!(c.threads, 3);
        assert_eq!(c.policy, "least-conn");
    }

    #[test]
    fn the_last_repeat_of_a_flag_wins() {
        let c = parse(&["-hc-path=/a", "--hc-path", "/b"]).unwrap();
        assert_eq!(c.hc_path, "/b");
    }

    #[test]
    fn negative_interval_names_the_flag() {
        assert_eq!(
            error(&["-hc-interval", "-1"]),
            r#"fnlb: invalid value "-1" for -hc-interval: must not be negative"#
        );
        assert_eq!(
            error(&["--hc-interval=-1s"]),
            r#"fnlb: invalid value "-1s" for -hc-interval: must not be negative"#
        );
        assert!(error(&["-hc-interval", "0"]).contains("must be greater than 0"));
        assert!(error(&["-hc-timeout", "0s"]).contains("-hc-timeout: must be greater than 0"));
    }

    #[test]
    fn bad_min_api_version_names_the_flag() {
        assert_eq!(
            error(&["-min-api-version", "banana"]),
            "fnlb: invalid value \"banana\" for -min-api-version: unexpected character 'b' while \
             parsing major version number"
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (list, flag) in [
            (&["-listen", "nonsense"][..], "-listen"),
            (&["-mgmt-listen=:99999"], "-mgmt-listen"),
            (&["-db", "foo://x"], "-db"),
            (&["-nodes", "http://a:1"], "-nodes"),
            (&["-hc-path", "version"], "-hc-path"),
            (&["-hc-unhealthy", "0"], "-hc-unhealthy"),
            (&["-hc-healthy", "x"], "-hc-healthy"),
            (&["-shutdown-timeout", "-5"], "-shutdown-timeout"),
            (&["-zipkin", "zipkin:9411"], "-zipkin"),
            (&["-namespace", "Not_OK"], "-namespace"),
            (&["-target-port", "0"], "-target-port"),
            (&["-target-port", "65536"], "-target-port"),
            (&["-threads", "-1"], "-threads"),
            (&["-policy", "random"], "-policy"),
        ] {
            let msg = error(list);
            assert!(msg.starts_with("fnlb: invalid value "), "{msg}");
            assert!(msg.contains(&format!(" for {flag}: ")), "{list:?}: {msg}");
        }
    }

    #[test]
    fn node_error_repeats_the_node_message() {
        assert_eq!(
            error(&["-nodes", "a:1,http://b:2"]),
            r#"fnlb: invalid value "a:1,http://b:2" for -nodes: node address "http://b:2" must be host:port without a scheme"#
        );
    }

    #[test]
    fn db_errors_never_show_the_password() {
        let msg = error(&["-db", "postgres://u:s3cret@/db"]);
        assert!(msg.contains("-db"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        let msg = error(&["-db", "mysql://u:s3cret@tcp(h:1/db"]);
        assert!(!msg.contains("s3cret"), "{msg}");
        let msg = error(&["-db", "foo://u:s3cret@h/db"]);
        assert!(!msg.contains("s3cret"), "{msg}");
        let c = parse(&["-db", "postgres://u:s3cret@h/db"]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn nodes_that_are_our_own_listeners_are_refused() {
        let msg = error(&["-listen=127.0.0.1:18081", "-nodes=a:1,127.0.0.1:18081"]);
        assert_eq!(
            msg,
            "fnlb: invalid value \"127.0.0.1:18081\" for -nodes: node 127.0.0.1:18081 is this balancer's own \
             listener: every call would loop back to it"
        );
        let msg = error(&["-listen=:18081", "-mgmt-listen=:18082", "-nodes=localhost:18082"]);
        assert!(msg.contains("for -nodes: node localhost:18082 is this balancer's own listener"), "{msg}");
        assert!(parse(&["-listen=127.0.0.1:18081", "-nodes=127.0.0.2:18081,127.0.0.1:18082"]).is_ok());
    }

    #[test]
    fn unknown_flags_are_refused_in_the_users_spelling() {
        assert_eq!(error(&["-foo"]), "fnlb: flag provided but not defined: -foo (see -help)");
        assert_eq!(error(&["--foo=1"]), "fnlb: flag provided but not defined: --foo=1 (see -help)");
        // Found by fuzzing: a control character in an unknown flag split the error over lines.
        assert_eq!(error(&["-target-port\n"]), "fnlb: flag provided but not defined: -target-port\\n (see -help)");
        assert_eq!(error(&["-x\u{1b}[31m"]), "fnlb: flag provided but not defined: -x\\u{1b}[31m (see -help)");
        assert!(error(&["stray"]).starts_with("fnlb: "));
    }

    #[test]
    fn missing_value_says_which_flag() {
        assert_eq!(error(&["-listen"]), "fnlb: flag needs an argument: -listen");
    }

    #[test]
    fn a_value_may_start_with_a_dash() {
        // As in Go, the word after a flag that takes a value is its value.
        let msg = error(&["-listen", "-nodes"]);
        assert!(msg.starts_with(r#"fnlb: invalid value "-nodes" for -listen"#), "{msg}");
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        for spelling in ["-h", "-help", "--help"] {
            let exit = parse(&[spelling]).unwrap_err();
            assert_eq!((exit.code, exit.stdout), (0, true), "{spelling}");
            for arg in hermetic().get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                assert!(exit.message.contains(&format!("--{long}")), "{long}");
            }
            // clap wraps long lines: compare with the line breaks folded away.
            let folded = exit.message.split_whitespace().collect::<Vec<_>>().join(" ");
            for default in ["[default: :8081]", "[default: sqlite3://:memory:]", "[default: 0.0.235]"] {
                assert!(folded.contains(default), "{default}\n{}", exit.message);
            }
        }
    }

    #[test]
    fn version_prints_name_and_version() {
        for spelling in ["--version", "-version", "-V"] {
            let exit = parse(&[spelling]).unwrap_err();
            assert_eq!(exit.code, 0);
            assert!(exit.stdout);
            assert_eq!(exit.message, format!("fnlb {}", env!("CARGO_PKG_VERSION")));
        }
    }

    #[test]
    fn every_flag_has_its_env_variable_and_a_default() {
        for arg in command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if !arg.get_action().takes_values() {
                continue;
            }
            let want = format!("FNLB_{}", long.replace('-', "_").to_ascii_uppercase());
            assert_eq!(arg.get_env().map(|e| e.to_string_lossy().into_owned()), Some(want), "{long}");
            assert_eq!(arg.get_default_values().len(), 1, "{long}");
            assert!(arg.is_allow_hyphen_values_set(), "{long}");
        }
    }

    #[test]
    fn rewrite_go_args_doubles_the_dash_of_known_long_flags() {
        let out = rewrite_go_args(args(&["-nodes", "a:1", "-listen=:1", "--db", "k8s", "-help", "-version", "-h"]));
        assert_eq!(out, args(&["--nodes", "a:1", "--listen=:1", "--db", "k8s", "--help", "--version", "-h"]));
    }

    #[test]
    fn rewrite_go_args_leaves_values_and_unknown_words_alone() {
        let out = rewrite_go_args(args(&["-hc-interval", "-1", "-listen", "-nodes", "-foo", "x", "--", "-nodes"]));
        assert_eq!(out, args(&["--hc-interval", "-1", "--listen", "-nodes", "-foo", "x", "--", "-nodes"]));
        // The program name is never touched, whatever it looks like.
        let out = rewrite_go_args(vec!["-nodes".into(), "-nodes".into(), "a:1".into()]);
        assert_eq!(out, vec![OsString::from("-nodes"), "--nodes".into(), "a:1".into()]);
    }

    #[test]
    fn overlapping_listeners_are_refused() {
        let msg = error(&["-listen=:8081", "-mgmt-listen=127.0.0.1:8081"]);
        assert!(msg.contains("-mgmt-listen") && msg.contains("-listen"), "{msg}");
        assert!(parse(&["-listen=:8081", "-mgmt-listen=:8082"]).is_ok());
        assert!(parse(&["-listen=127.0.0.1:8081", "-mgmt-listen=127.0.0.2:8081"]).is_ok());
    }

    #[test]
    fn policy_names_are_checked() {
        for name in POLICIES {
            assert_eq!(parse_policy(name).as_deref(), Ok(*name));
        }
        assert!(parse_policy("Bounded").is_err());
        let help = command().render_help().to_string();
        let line = help.lines().find(|l| l.contains("-policy")).unwrap();
        assert!(POLICIES.iter().all(|p| line.contains(p)), "{line}");
    }

    #[test]
    fn log_format_and_access_log() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.log_format, c.access_log), (LogFormat::Text, false));
        // A Go bool flag takes no separate value: the next word is the next flag.
        let c = parse(&["-log-format", "json", "-access-log", "-nodes", "a:1"]).unwrap();
        assert_eq!((c.log_format, c.access_log), (LogFormat::Json, true));
        assert_eq!(c.nodes, vec!["a:1"]);
        for (list, want) in [
            (&["-access-log=false"][..], false),
            (&["--access-log=true"], true),
            (&["--access-log"], true),
            (&["-access-log=1"], true),
        ] {
            assert_eq!(parse(list).unwrap().access_log, want, "{list:?}");
        }
        assert!(error(&["-log-format", "xml"]).contains("-log-format"));
        assert!(error(&["-access-log=maybe"]).contains("-access-log"));
    }

    #[test]
    fn tls_cert_and_key_go_together_and_are_read_at_parse() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());

        assert_eq!(parse(&[]).unwrap().tls, None);
        assert_eq!(parse(&["-tls-cert=", "-tls-key="]).unwrap().tls, None);
        let tls = parse(&["-tls-cert", c, "-tls-key", k]).unwrap().tls.expect("tls");
        assert_eq!((tls.cert_path.as_path(), tls.key_path.as_path()), (cert.as_path(), key.as_path()));

        assert_eq!(error(&["-tls-cert", c]), "fnlb: -tls-cert needs -tls-key (its private key): give both, or neither");
        assert_eq!(error(&["--tls-key", k]), "fnlb: -tls-key needs -tls-cert (its certificate): give both, or neither");
        let missing = dir.path().join("missing.pem");
        let m = missing.to_str().unwrap();
        assert_eq!(
            error(&["-tls-cert", m, "-tls-key", k]),
            format!("fnlb: invalid value {m:?} for -tls-cert: cannot read the file: No such file or directory")
        );
        assert!(error(&["-tls-cert", c, "-tls-key", m]).contains(" for -tls-key: cannot read the file"));
        let msg = error(&["-tls-cert", c, "-tls-key", c]);
        assert!(msg.starts_with(&format!("fnlb: invalid value {c:?} for -tls-key: no PRIVATE KEY")), "{msg}");
        let msg = error(&["-tls-cert", k, "-tls-key", k]);
        assert!(msg.contains(" for -tls-cert: no CERTIFICATE"), "{msg}");
    }
}
