//! What the barriers cost a decision: `write_from` and a service's `certificate` block are
//! `forbid` policies, and a request they refuse is evaluated a second time without them (to
//! tell whether the permits allow it, which decides the sentence and the break-glass rule).
//!
//!   cargo bench --bench barriers
//!
//! Times `Policy::evaluate` (never the remembered `decide`) on examples/bulkhead.hcl as it
//! is, the baseline, and with prod written from 10.20.0.0/16 only and ci-prod bound to its
//! runner's certificate. BENCH_BARRIERS_CALLS (default 50000) calls per round,
//! BENCH_BARRIERS_ROUNDS (default 5) rounds; one line per case with the median rate and its
//! ratio to the baseline, then a `RESULT` line.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use bulkhead::certificate::ClientCertificate;
use bulkhead::config::Config;
use bulkhead::identity::Principal;
use bulkhead::policy::{Action, Decision, Policy, RequestContext};

mod common;

use common::env_number;

/// One request, asked of one compiled config.
struct Case<'a> {
    name: &'static str,
    policy: &'a Policy,
    principal: Principal,
    from: [u8; 4],
    certificate: Option<&'a ClientCertificate>,
}

impl Case<'_> {
    fn ask(&self) -> Decision {
        self.policy.evaluate(
            &self.principal,
            Action::StateWrite,
            "prod",
            &RequestContext {
                state: "network",
                operation: "OperationTypeApply",
                source_ip: Some(IpAddr::from(self.from)),
                certificate: self.certificate,
            },
        )
    }

    /// The median over `rounds` of the calls per second of `calls` evaluations.
    fn rate(&self, rounds: usize, calls: usize) -> f64 {
        for _ in 0..calls / 10 {
            black_box(self.ask());
        }
        let mut rates: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    black_box(self.ask());
                }
                calls as f64 / start.elapsed().as_secs_f64()
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }
}

fn main() {
    let calls = env_number("BENCH_BARRIERS_CALLS", 50_000);
    let rounds = env_number("BENCH_BARRIERS_ROUNDS", 5);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bulkhead.hcl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let plain = Config::parse(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let barred_text = text
        .replacen(
            "server {\n",
            "server {\n  tls {\n    cert_file = \"s.pem\"\n    key_file = \"s.key\"\n    client_ca_file = \"ca.pem\"\n  }\n",
            1,
        )
        .replace(
            "service \"ci-prod\" {}",
            "service \"ci-prod\" {\n  certificate { subject = \"CN=runner-prod,O=acme\" }\n}",
        )
        .replace("  # write_from = ", "  write_from = ");
    assert_ne!(
        barred_text, text,
        "the example config no longer has the lines to edit"
    );
    let barred = Config::parse(&path, &barred_text).unwrap_or_else(|e| panic!("{e}"));
    let (plain, barred) = (
        Policy::compile(&plain).unwrap_or_else(|e| panic!("{e}")),
        Policy::compile(&barred).unwrap_or_else(|e| panic!("{e}")),
    );
    let runner = ClientCertificate {
        subject: "CN=runner-prod,O=acme".into(),
        dns: Vec::new(),
        uris: Vec::new(),
    };
    let ci = || Principal::Service("ci-prod".into());
    let alice = || Principal::User("alice".into());
    let (inside, outside) = ([10, 20, 0, 7], [203, 0, 113, 9]);
    let case = |name, policy, principal, from, certificate| Case {
        name,
        policy,
        principal,
        from,
        certificate,
    };
    let cases = [
        case(
            "baseline: pipeline writes, no barriers",
            &plain,
            ci(),
            inside,
            None,
        ),
        case(
            "pipeline writes, inside, with its certificate",
            &barred,
            ci(),
            inside,
            Some(&runner),
        ),
        case(
            "pipeline refused: outside write_from",
            &barred,
            ci(),
            outside,
            Some(&runner),
        ),
        case(
            "pipeline refused: no certificate",
            &barred,
            ci(),
            inside,
            None,
        ),
        case(
            "developer refused, no barriers (default deny)",
            &plain,
            alice(),
            outside,
            None,
        ),
        case(
            "developer refused, outside write_from",
            &barred,
            alice(),
            outside,
            None,
        ),
    ];
    let mut rates = Vec::new();
    for c in &cases {
        let d = c.ask();
        let rate = c.rate(rounds, calls);
        rates.push(rate);
        println!(
            "{:<48} {:>9.0} decisions/s  {:>5.2}x baseline  (allowed: {}, barrier: {})",
            c.name,
            rate,
            rate / rates[0],
            d.allowed,
            d.barrier.is_some()
        );
    }
    let fields: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, r)| format!("case{i}_per_s={r:.0} case{i}_ratio={:.2}", r / rates[0]))
        .collect();
    println!(
        "RESULT barriers {} rounds={rounds} calls={calls}",
        fields.join(" ")
    );
}
