//! The command line of the real binary: help, version, and one-line errors naming the flag.
//!
//! Every case here ends before the balancer would start, so no port is bound; a binary that
//! starts anyway is killed after a few seconds and the test fails.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a command-line outcome may take: parsing is instant, this only stops a hang.
const DEADLINE: Duration = Duration::from_secs(20);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs fnlb with `args` and `env`, and none of the caller's `FNLB_*` variables.
fn fnlb_with_env(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fnlb"));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FNLB_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("start fnlb");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fnlb") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fnlb {args:?} did not exit within {DEADLINE:?}: it should stop at the command line");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    Outcome { code: status.code(), stdout, stderr }
}

fn fnlb(args: &[&str]) -> Outcome {
    fnlb_with_env(args, &[])
}

/// Asserts a usage error: exit 2, nothing on stdout, exactly one line on stderr; returns it.
fn usage_error(out: &Outcome, what: &str) -> String {
    assert_eq!(out.code, Some(2), "{what}: stderr {:?}", out.stderr);
    assert_eq!(out.stdout, "", "{what}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected, got {:?}", out.stderr);
    lines[0].to_owned()
}

const FLAGS_AND_DEFAULTS: &[(&str, &str)] = &[
    ("listen", ":8081"),
    ("mgmt-listen", ":8081"),
    ("nodes", "\"\""),
    ("db", "sqlite3://:memory:"),
    ("hc-interval", "3"),
    ("hc-path", "/version"),
    ("hc-unhealthy", "2"),
    ("hc-healthy", "1"),
    ("hc-timeout", "5"),
    ("min-api-version", "0.0.235"),
    ("shutdown-timeout", "0"),
    ("zipkin", "\"\""),
    ("namespace", "\"\""),
    ("label-selector", "\"\""),
    ("target-port", "8080"),
];

#[test]
fn help_lists_every_flag_with_its_default() {
    for spelling in ["-h", "-help", "--help"] {
        let out = fnlb(&[spelling]);
        assert_eq!(out.code, Some(0), "{spelling}: {:?}", out.stderr);
        assert_eq!(out.stderr, "", "{spelling}");
        for (flag, default) in FLAGS_AND_DEFAULTS {
            let line = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("--{flag} ")))
                .unwrap_or_else(|| panic!("{spelling}: no line for --{flag} in\n{}", out.stdout));
            assert!(line.contains(&format!("[default: {default}]")), "{spelling}: {line}");
            let env = format!("FNLB_{}", flag.replace('-', "_").to_ascii_uppercase());
            assert!(line.contains(&env), "{spelling}: {line}");
        }
    }
}

#[test]
fn help_does_not_print_environment_values() {
    let out = fnlb_with_env(&["--help"], &[("FNLB_DB", "postgres://u:s3cret@db/fn")]);
    assert_eq!(out.code, Some(0));
    assert!(!out.stdout.contains("s3cret"), "{}", out.stdout);
}

#[test]
fn version_prints_name_and_version() {
    for spelling in ["--version", "-version"] {
        let out = fnlb(&[spelling]);
        assert_eq!(out.code, Some(0), "{spelling}: {:?}", out.stderr);
        assert_eq!(out.stdout, format!("fnlb {}\n", env!("CARGO_PKG_VERSION")), "{spelling}");
        assert_eq!(out.stderr, "", "{spelling}");
    }
}

#[test]
fn bad_values_are_one_line_naming_the_flag() {
    for (args, flag) in [
        (&["-min-api-version", "banana"][..], "-min-api-version"),
        (&["-listen", "nonsense"], "-listen"),
        (&["-db", "foo://x"], "-db"),
        (&["-hc-interval", "-1"], "-hc-interval"),
        (&["-nodes", "http://a:1"], "-nodes"),
        (&["--hc-interval=-1"], "-hc-interval"),
        (&["-target-port=0"], "-target-port"),
    ] {
        let line = usage_error(&fnlb(args), &format!("{args:?}"));
        assert!(line.contains(&format!(" {flag}")), "{args:?}: {line}");
    }
}

#[test]
fn bad_min_api_version_says_why() {
    let line = usage_error(&fnlb(&["-min-api-version", "banana"]), "banana");
    assert_eq!(
        line,
        "fnlb: invalid value \"banana\" for -min-api-version: unexpected character 'b' while parsing major \
         version number"
    );
}

#[test]
fn negative_interval_is_refused() {
    let line = usage_error(&fnlb(&["-hc-interval", "-1"]), "-hc-interval -1");
    assert!(line.contains("must not be negative"), "{line}");
}

#[test]
fn db_error_hides_the_password() {
    let line = usage_error(&fnlb(&["-db", "postgres://u:s3cret@/fn"]), "-db");
    assert!(line.contains("-db"), "{line}");
    assert!(!line.contains("s3cret"), "{line}");
}

#[test]
fn unknown_flag_is_refused() {
    for spelling in ["-banana", "--banana", "--banana=1"] {
        let line = usage_error(&fnlb(&[spelling]), spelling);
        assert!(line.contains(spelling), "{line}");
    }
}

#[test]
fn environment_values_are_validated_and_named() {
    let out = fnlb_with_env(&[], &[("FNLB_HC_INTERVAL", "-1")]);
    let line = usage_error(&out, "FNLB_HC_INTERVAL=-1");
    assert!(line.contains("-hc-interval") && line.contains("FNLB_HC_INTERVAL"), "{line}");
}

#[test]
fn flag_wins_over_environment() {
    // The bad variable is overridden by a good flag, so the only error left is the port's.
    let out = fnlb_with_env(&["-min-api-version", "1.0.0", "-target-port", "0"], &[("FNLB_MIN_API_VERSION", "banana")]);
    let line = usage_error(&out, "flag over env");
    assert!(line.contains("-target-port"), "{line}");
    assert!(!line.contains("banana"), "{line}");
}

#[test]
fn empty_environment_variable_counts_as_unset() {
    // An empty FNLB_HC_INTERVAL falls back to the default; the only error left is the port's.
    let out = fnlb_with_env(&["-target-port", "0"], &[("FNLB_HC_INTERVAL", "")]);
    let line = usage_error(&out, "empty env");
    assert!(line.contains("-target-port"), "{line}");
}

/// A port nothing listens on now (the balancer must stop before it would bind it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_node_that_is_our_own_listener_is_refused_at_start() {
    let listen = format!("127.0.0.1:{}", free_port());
    let line = usage_error(&fnlb(&["-listen", &listen, "-nodes", &listen]), "-nodes = -listen");
    assert_eq!(
        line,
        format!("fnlb: invalid value {listen:?} for -nodes: node {listen} is this balancer's own listener: every call would loop back to it")
    );
    // The management listener too, and `localhost` reaches a listener bound to every address.
    let (traffic, mgmt) = (free_port(), free_port());
    let out = fnlb(&[
        "-listen",
        &format!(":{traffic}"),
        "-mgmt-listen",
        &format!(":{mgmt}"),
        "-nodes",
        &format!("localhost:{mgmt}"),
    ]);
    let line = usage_error(&out, "-nodes = -mgmt-listen");
    assert!(line.contains(" for -nodes: ") && line.contains("own listener"), "{line}");
}
