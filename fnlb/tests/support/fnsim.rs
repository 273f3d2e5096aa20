//! fnsim processes (simulated Fn nodes with the container model) for end-to-end tests.
//!
//! fnsim is another package's binary, so `CARGO_BIN_EXE_fnsim` is not set in fnlb's tests. They
//! run `<target>/debug/fnsim` (`cargo test --workspace` builds it before any test runs, because
//! fnsim's own tests need it) and build it with `cargo build -p fnsim` if it is missing.
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The fnsim binary next to this test's own target directory (`target/debug/deps/<test>-*`).
pub fn fnsim_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FNSIM_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe.parent().and_then(|d| d.parent()).expect("target/debug");
    let bin = debug.join("fnsim");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "fnsim", "--bin", "fnsim"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p fnsim");
        assert!(status.success(), "cargo build -p fnsim failed");
    }
    assert!(bin.exists(), "no fnsim binary at {}", bin.display());
    bin
}

/// One `fnsim serve` process and the addresses of its nodes, in node-index order. Killed on drop.
pub struct Fnsim {
    child: Child,
    pub addrs: Vec<SocketAddr>,
}

impl Fnsim {
    /// Runs `fnsim serve <args>` and waits for `fnsim ready`; `Err` if it exits first (a port
    /// still taken, say) with what it printed on stderr.
    pub fn try_start(args: &[&str]) -> Result<Fnsim, String> {
        let mut child = Command::new(fnsim_bin())
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addrs = Vec::new();
        let mut ready = false;
        // fnsim prints `fnsim node <i> listening on <addr>` per node and then `fnsim ready`,
        // or exits (EOF) if it cannot bind.
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(a) = line.split(" listening on ").nth(1) {
                addrs.extend(a.trim().parse::<SocketAddr>().ok());
            }
            if line == "fnsim ready" {
                ready = true;
                break;
            }
        }
        // Keep draining stdout so the nodes never block on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        if ready && !addrs.is_empty() {
            return Ok(Fnsim { child, addrs });
        }
        let _ = child.kill();
        let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
        Err(format!("fnsim did not start: {}", out.unwrap_or_default().trim()))
    }

    pub fn start(args: &[&str]) -> Fnsim {
        Self::try_start(args).unwrap_or_else(|e| panic!("fnsim serve {args:?}: {e}"))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Fnsim {
    fn drop(&mut self) {
        self.kill();
    }
}
