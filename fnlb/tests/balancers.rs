//! Balancers count themselves on a SQLite file shared by several balancers on one machine (the
//! PostgreSQL and MySQL cases are in store_sql.rs, Kubernetes in k8s.rs): heartbeat rows in
//! `lb_balancers`, the count in `/1/lb/cluster`, a clean shutdown leaving at once.
mod support;

use std::time::{Duration, Instant};

use support::*;

async fn count_of(lb: &Fnlb) -> (u64, String) {
    let c = send("GET", &lb.mgmt_url("/1/lb/cluster"), "").await.json();
    (c["balancers"].as_u64().unwrap(), c["balancers_counted_by"].as_str().unwrap().to_string())
}

async fn wait_count(lb: &Fnlb, want: u64) {
    let start = Instant::now();
    loop {
        let got = count_of(lb).await;
        if got == (want, "heartbeats".to_string()) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "count {got:?}, want {want}\n{}", lb.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_on_one_sqlite_file_count_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite3://{}", dir.path().join("shared.db").display());
    let one = Fnlb::start(&["-db", &db]);
    wait_count(&one, 1).await;
    let mut two = Fnlb::start(&["-db", &db]);
    wait_count(&one, 2).await;
    wait_count(&two, 2).await;
    two.signal("TERM");
    assert_eq!(two.wait_exit(Duration::from_secs(10)), Some(0), "{}", two.log());
    wait_count(&one, 1).await;
    // The dashboard's data carries the count too.
    let d = send("GET", &one.mgmt_url("/1/lb/dash/data"), "").await.json();
    assert_eq!(d["cluster"]["balancers"], 1, "{d}");
    assert_eq!(d["cluster"]["balancers_counted_by"], "heartbeats", "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_flag_fixes_the_count() {
    let lb = Fnlb::start(&["-balancers", "3"]);
    assert_eq!(count_of(&lb).await, (3, "flag".to_string()));
    let lb = Fnlb::start_raw(
        &["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-hc-interval", "0.2"],
        &[("FNLB_BALANCERS", "2")],
    );
    assert_eq!(count_of(&lb).await, (2, "flag".to_string()));
    // An empty variable is unset: counted.
    let lb = Fnlb::start_raw(
        &["-listen", "127.0.0.1:0", "-mgmt-listen", "127.0.0.1:0", "-hc-interval", "0.2"],
        &[("FNLB_BALANCERS", "")],
    );
    wait_count(&lb, 1).await;
}
