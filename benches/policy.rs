//! Cedar policy decisions per second and per-decision latency.
//!
//! Compiles the policy of examples/bulkhead.hcl (three environments, two teams, two services,
//! a protected environment), then times, for a fixed mix of principals, actions and
//! environments, allowed and denied, each call on its own with `Instant`:
//! - `Policy::evaluate`: Cedar evaluates the policies every time;
//! - `Policy::decide`: what the server calls, which remembers decisions, so that a request
//!   made again (terraform repeats the same few) is not evaluated again.
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

/// Times `f(i)` for `calls` values of `i`, `rounds` times, after a warm-up: the medians over
/// the rounds of calls per second, and of each round's p50 and p99 per call in microseconds.
fn time_rounds<T>(rounds: usize, calls: usize, f: impl Fn(usize) -> T) -> (f64, f64, f64) {
    for i in 0..(calls / 20).max(1000) {
        black_box(f(i));
    }
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut times = vec![0u64; calls];
    for _ in 0..rounds {
        let start = Instant::now();
        for (i, slot) in times.iter_mut().enumerate() {
            let t = Instant::now();
            black_box(f(i));
            *slot = t.elapsed().as_nanos() as u64;
        }
        let total = start.elapsed().as_secs_f64();
        times.sort_unstable();
        rates.push(calls as f64 / total);
        p50s.push(percentile(&times, 0.50) as f64 / 1000.0);
        p99s.push(percentile(&times, 0.99) as f64 / 1000.0);
    }
    (median(&mut rates), median(&mut p50s), median(&mut p99s))
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
    let request = |i: usize| {
        let (p, a, e) = mix[i % mix.len()];
        let ctx = RequestContext {
            state: "envs/network",
            operation: operations[i % operations.len()],
            source_ip: ip,
            certificate: None,
        };
        (p, a, e, ctx)
    };
    let decide = |i: usize| {
        let (p, a, e, ctx) = request(i);
        policy.decide(p, a, e, &ctx)
    };
    let evaluate = |i: usize| {
        let (p, a, e, ctx) = request(i);
        policy.evaluate(p, a, e, &ctx)
    };

    let allowed = (0..mix.len()).filter(|&i| decide(i).allowed).count();
    let (rate, p50, p99) = time_rounds(rounds, calls, evaluate);
    let (kept_rate, kept_p50, kept_p99) = time_rounds(rounds, calls, decide);
    println!(
        "policy: {} environments compiled in {:.1} ms; mix of {} requests ({} allowed, {} denied); {} rounds x {} calls of each",
        config.environments.len(),
        compile.as_secs_f64() * 1000.0,
        mix.len(),
        allowed,
        mix.len() - allowed,
        rounds,
        calls
    );
    println!("policy: evaluate(), median {rate:.0} decisions/s, p50 {p50:.2} us, p99 {p99:.2} us per decision");
    println!("policy: decide(), remembered, median {kept_rate:.0} decisions/s, p50 {kept_p50:.2} us, p99 {kept_p99:.2} us");
    println!(
        "RESULT policy decisions_per_s={rate:.0} p50_us={p50:.2} p99_us={p99:.2} remembered_per_s={kept_rate:.0} remembered_p50_us={kept_p50:.2} remembered_p99_us={kept_p99:.2} mix={} allowed={allowed} rounds={rounds} calls={calls}",
        mix.len()
    );
}
