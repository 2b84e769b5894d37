//! Audit queries on a large log: the newest 100 records of one environment, with and without
//! filters, when its chain holds a million records; against the baseline of reading the whole
//! chain and keeping the newest 100 (what a log without indexed queries does).
//!
//!   cargo bench --bench audit
//!
//! BENCH_AUDIT_RECORDS (default 1000000) records in the `prod` chain, BENCH_AUDIT_ROUNDS
//! (default 9) timed rounds per query; BENCH_POSTGRES_URL puts the chain on PostgreSQL.
//! Filling the chain goes through the same append as the server's group commit (keyed chain
//! and all), in transactions of 1000 records. First, the cost of linking one record: the keyed
//! MAC against the plain SHA-256 that chained records before.

use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead::audit::{self, Filter, Outcome, Record};
use bulkhead::config::Config;
use bulkhead::store::Stores;

mod common;

use common::env_number;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median nanoseconds per record of linking a typical record, plain SHA-256 and keyed MAC.
fn links(rounds: usize) {
    let mut record = Record::new("state:read");
    record.principal = Some("user:alice".into());
    record.environment = Some("prod".into());
    record.state = Some("network".into());
    record.source = Some("10.0.0.1".into());
    record.user_agent = Some("Terraform/1.11.4".into());
    record.decision = Outcome::Allow;
    record.status = Some(200);
    record.version = Some(12);
    let json = serde_json::to_string(&record).expect("record");
    let key = audit::AuditKey::from_hex(&"5a".repeat(32), "bench")
        .expect("key")
        .chain("prod");
    let prev = audit::GENESIS;
    let n: i64 = 200_000;
    let per_record = |f: &dyn Fn(i64) -> String| {
        let times: Vec<Duration> = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for seq in 0..n {
                    std::hint::black_box(f(seq));
                }
                t.elapsed()
            })
            .collect();
        median(times).as_nanos() as f64 / n as f64
    };
    let plain = per_record(&|seq| audit::legacy_link(seq, prev, &json));
    let keyed = per_record(&|seq| audit::link(&key, seq, prev, &json));
    println!(
        "linking a record of {} bytes: plain SHA-256 {plain:.0} ns, keyed MAC (HMAC-SHA256) {keyed:.0} ns",
        json.len()
    );
}

#[tokio::main]
async fn main() {
    let records = env_number("BENCH_AUDIT_RECORDS", 1_000_000);
    let rounds = env_number("BENCH_AUDIT_ROUNDS", 9);
    links(rounds);
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = std::env::var("BENCH_POSTGRES_URL")
        .map(|url| format!("storage = \"{url}\""))
        .unwrap_or_default();
    let config_text = format!(
        r#"
server {{
  data_dir = "data"
  {storage}
}}
team "platform" {{ members = ["pat"] }}
environment "prod" {{
  owner = "team:platform"
  read  = ["team:platform"]
  write = ["team:platform"]
}}
"#
    );
    let config_path = dir.path().join("bulkhead.hcl");
    std::fs::write(&config_path, &config_text).expect("write config");
    let config = Config::parse(&config_path, &config_text).unwrap_or_else(|e| panic!("{e}"));
    let stores = Stores::open(&config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let prod = stores.environment("prod").expect("prod");

    let fill = Instant::now();
    let batch = 1_000;
    let mut written = 0;
    while written < records {
        let end = (written + batch).min(records);
        let batch: Vec<Record> = (written..end)
            .map(|i| {
                let mut r = Record::new(if i % 4 == 0 {
                    "state:write"
                } else {
                    "state:read"
                });
                r.principal = Some(format!("user:u{}", i % 20));
                r.environment = Some("prod".into());
                r.state = Some(format!("app/s{}", i % 50));
                r.decision = if i % 10 == 0 {
                    Outcome::Deny
                } else {
                    Outcome::Allow
                };
                r.status = Some(200);
                r.source = Some("10.0.0.1".into());
                r
            })
            .collect();
        let mut tx = prod.begin().await.expect("begin");
        tx.append_records(&batch).await.expect("append");
        tx.commit().await.expect("commit");
        written = end;
    }
    let fill = fill.elapsed();
    let chains = stores.chains();
    let chain = &chains[1].1;
    let kind = match config.server.storage {
        Some(_) => "postgres",
        None => "sqlite",
    };

    let last = |filter: Filter| Filter {
        last: Some(100),
        ..filter
    };
    let cases: Vec<(&str, Filter)> = vec![
        ("newest 100", last(Filter::default())),
        (
            "newest 100, --state app/s7",
            last(Filter {
                state: Some("app/s7".into()),
                ..Filter::default()
            }),
        ),
        (
            "newest 100, --principal user:u3",
            last(Filter {
                principal: Some("user:u3".into()),
                ..Filter::default()
            }),
        ),
        (
            "newest 100, --decision deny",
            last(Filter {
                decision: Some("deny".into()),
                ..Filter::default()
            }),
        ),
    ];

    // The baseline: every record read, the newest 100 kept.
    let mut baseline = Vec::new();
    for _ in 0..rounds.min(3) {
        let t = Instant::now();
        let (rows, _) = chain.read_chain().await.expect("read chain");
        let newest = &rows[rows.len().saturating_sub(100)..];
        assert_eq!(newest.len(), 100.min(records));
        baseline.push(t.elapsed());
    }
    let baseline = median(baseline);

    println!(
        "audit log queries: {records} records in one environment's chain ({kind}), filled in {:.1} s; median of {rounds} rounds",
        fill.as_secs_f64()
    );
    println!(
        "{:<34} {:>12} {:>14}",
        "query", "time (ms)", "vs whole read"
    );
    println!(
        "{:<34} {:>12.2} {:>13.2}x",
        "read whole chain, keep newest 100",
        ms(baseline),
        1.0
    );
    for (name, filter) in &cases {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let rows = chain.query(filter).await.expect("query");
            assert_eq!(rows.len(), 100, "{name}");
            times.push(t.elapsed());
        }
        let m = median(times);
        println!(
            "{:<34} {:>12.2} {:>13.4}x",
            name,
            ms(m),
            m.as_secs_f64() / baseline.as_secs_f64()
        );
    }

    // The command a person runs, process start and all.
    let bin = Path::new(env!("CARGO_BIN_EXE_bulkhead"));
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let out = std::process::Command::new(bin)
            .args([
                "audit",
                "log",
                "--config",
                "bulkhead.hcl",
                "--env",
                "prod",
                "--last",
                "100",
            ])
            .current_dir(dir.path())
            .output()
            .expect("run bulkhead");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), 100);
        times.push(t.elapsed());
    }
    let m = median(times);
    println!(
        "{:<34} {:>12.2} {:>13.4}x",
        "`bulkhead audit log --last 100`",
        ms(m),
        m.as_secs_f64() / baseline.as_secs_f64()
    );
}
