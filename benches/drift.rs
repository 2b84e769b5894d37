//! What keeping state accurate adds to a write, against what every write did before it, in the
//! same run, on states of 100, 1,000 and 10,000 `terraform_data` instances with a tainted one
//! among them:
//! - before: the resource digests (`history::fingerprint`);
//! - now: the digests and what the state says of itself, in one reading (`drift::Facts::read`),
//!   then the detectors (`drift::signals::on_write`).
//!
//!   cargo bench --bench drift
//!
//! BENCH_DRIFT_ROUNDS (default 9) timings of each; the table shows medians, and the cost of
//! the drift work as a ratio of the fingerprint's.

use std::hint::black_box;
use std::time::Instant;

use bulkhead::drift::signals::{on_write, Seen, Write};
use bulkhead::drift::Facts;
use bulkhead::history;

mod common;

use common::env_number;

/// A state of `n` terraform_data instances, the first tainted, whose inputs carry `tag`.
fn state(n: usize, serial: i64, tag: &str) -> Vec<u8> {
    let mut instances = Vec::with_capacity(n);
    for i in 0..n {
        let status = if i == 0 { r#","status":"tainted""# } else { "" };
        instances.push(format!(
            r#"{{"index_key":{i},"schema_version":0,"attributes":{{"id":"{i:08x}-0000-4000-8000-000000000000","input":{{"value":"{tag}-{i}","type":"string"}},"output":{{"value":"{tag}-{i}","type":"string"}},"triggers_replace":null}},"sensitive_attributes":[]{status}}}"#
        ));
    }
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"L","outputs":{{}},"resources":[{{"mode":"managed","type":"terraform_data","name":"pad","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{}]}}],"check_results":null}}"#,
        instances.join(",")
    )
    .into_bytes()
}

fn seen<'a>(serial: i64, resources: &'a str, facts: Option<&'a Facts>) -> Seen<'a> {
    Seen {
        serial: Some(serial),
        lineage: Some("L"),
        resources: Some(resources),
        facts,
    }
}

fn median_ms(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

fn main() {
    let rounds = env_number("BENCH_DRIFT_ROUNDS", 9);
    println!(
        "{:>9} {:>9} {:>16} {:>18} {:>16} {:>10}",
        "instances",
        "state",
        "fingerprint (ms)",
        "facts+digests (ms)",
        "detectors (ms)",
        "now/before"
    );
    for n in [100, 1_000, 10_000] {
        let before = state(n, 1, "a");
        let after = state(n, 2, "b");
        let fingerprint = median_ms(rounds, || {
            black_box(history::fingerprint(black_box(&after)));
        });
        let read = median_ms(rounds, || {
            black_box(Facts::read(black_box(&after)));
        });
        let (old, new) = (
            history::fingerprint(&before).unwrap_or_default(),
            history::fingerprint(&after).unwrap_or_default(),
        );
        let (old_facts, new_facts) = (Facts::of(&before), Facts::of(&after));
        let detectors = median_ms(rounds, || {
            black_box(on_write(
                Some(&seen(1, &old, old_facts.as_ref())),
                &seen(2, &new, new_facts.as_ref()),
                &Write::default(),
            ));
        });
        println!(
            "{:>9} {:>8.1}M {:>16.2} {:>18.2} {:>16.2} {:>9.2}x",
            n,
            after.len() as f64 / 1e6,
            fingerprint,
            read,
            detectors,
            (read + detectors) / fingerprint
        );
        println!(
            "RESULT drift instances={n} bytes={} fingerprint_ms={fingerprint:.3} read_ms={read:.3} detectors_ms={detectors:.3}",
            after.len()
        );
    }
}
