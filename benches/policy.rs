//! Cedar policy decisions per second and per-decision latency.
//!
//! Compiles the policy of examples/bulkhead.hcl (three environments, two teams, two services,
//! a protected environment), then times `Policy::decide` for a fixed mix of principals, actions
//! and environments, allowed and denied, each call timed on its own with `Instant`.
//!
//!   cargo bench --bench policy
//!
//! BENCH_POLICY_CALLS (default 100000) calls per round, BENCH_POLICY_ROUNDS (default 5)
//! rounds. Prints one human line and one `RESULT` line (medians over the rounds) that
//! bench/run.sh reads.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

use bulkhead::config::Config;
use bulkhead::identity::Principal;
use bulkhead::policy::{Action, Policy, RequestContext};

mod common;

use common::env_number;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    let calls = env_number("BENCH_POLICY_CALLS", 100_000);
    let rounds = env_number("BENCH_POLICY_ROUNDS", 5);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bulkhead.hcl");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let compile_start = Instant::now();
    let policy = Policy::compile(&config).unwrap_or_else(|e| panic!("{e}"));
    let compile = compile_start.elapsed();

    // The mix: every declared principal plus one unknown, every action, every environment
    // plus one that does not exist.
    let mut principals = Principal::all(&config);
    principals.push(Principal::User("mallory".into()));
    let mut environments: Vec<String> =
        config.environments.iter().map(|e| e.name.clone()).collect();
    environments.push("nowhere".into());
    let operations = ["OperationTypeApply", "OperationTypePlan", ""];
    let mut mix = Vec::new();
    for p in &principals {
        for &a in &Action::ALL {
            for e in &environments {
                mix.push((p, a, e.as_str()));
            }
        }
    }
    let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
    let decide = |i: usize| {
        let (p, a, e) = mix[i % mix.len()];
        let ctx = RequestContext {
            state: "envs/network",
            operation: operations[i % operations.len()],
            source_ip: ip,
        };
        policy.decide(p, a, e, &ctx)
    };

    let allowed = (0..mix.len()).filter(|&i| decide(i).allowed).count();
    for i in 0..(calls / 20).max(1000) {
        black_box(decide(i));
    }

    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut times = vec![0u64; calls];
    for _ in 0..rounds {
        let start = Instant::now();
        for (i, slot) in times.iter_mut().enumerate() {
            let t = Instant::now();
            black_box(decide(i));
            *slot = t.elapsed().as_nanos() as u64;
        }
        let total = start.elapsed().as_secs_f64();
        times.sort_unstable();
        rates.push(calls as f64 / total);
        p50s.push(percentile(&times, 0.50) as f64 / 1000.0);
        p99s.push(percentile(&times, 0.99) as f64 / 1000.0);
    }
    let rate = median(&mut rates);
    let p50 = median(&mut p50s);
    let p99 = median(&mut p99s);
    println!(
        "policy: {} environments compiled in {:.1} ms; mix of {} requests ({} allowed, {} denied); {} rounds x {} decide() calls",
        config.environments.len(),
        compile.as_secs_f64() * 1000.0,
        mix.len(),
        allowed,
        mix.len() - allowed,
        rounds,
        calls
    );
    println!("policy: median {rate:.0} decisions/s, p50 {p50:.2} us, p99 {p99:.2} us per decision");
    println!(
        "RESULT policy decisions_per_s={rate:.0} p50_us={p50:.2} p99_us={p99:.2} mix={} allowed={allowed} rounds={rounds} calls={calls}",
        mix.len()
    );
}
