//! Keeping state accurate: signals raised by what the backend sees on writes and lock
//! releases, drift reports from the pipeline's refresh-only plans, acknowledgements, and the
//! refusals of each, over the API and the command line.

use bulkhead::client::Client;
use bulkhead::operations::drift::Acknowledgement;
use reqwest::StatusCode;

use crate::helpers::*;

/// A state with one `terraform_data` whose input is `input`, in `status` ("" or tainted).
fn with_data(serial: i64, lineage: &str, input: &str, status: &str) -> Vec<u8> {
    let status = match status {
        "" => String::new(),
        s => format!(r#","status":"{s}""#),
    };
    format!(
        r#"{{"version":4,"terraform_version":"1.11.4","serial":{serial},"lineage":"{lineage}","outputs":{{}},"resources":[{{"mode":"managed","type":"terraform_data","name":"x","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":[{{"schema_version":0,"attributes":{{"id":"1","input":"{input}","output":"{input}"}},"sensitive_attributes":[]{status}}}]}}],"check_results":null}}"#
    )
    .into_bytes()
}

/// The JSON of `terraform show -json` of a refresh-only plan in which `terraform_data.x`'s
/// input changed from `before` to `after` outside terraform (none when they are equal).
fn refresh_plan(before: &str, after: &str) -> Vec<u8> {
    let drift = if before == after {
        String::new()
    } else {
        format!(
            r#"{{"address":"terraform_data.x","mode":"managed","type":"terraform_data","name":"x","provider_name":"terraform.io/builtin/terraform","change":{{"actions":["update"],"before":{{"id":"1","input":"{before}","output":"{before}"}},"after":{{"id":"1","input":"{after}","output":"{after}"}},"after_unknown":{{}},"before_sensitive":{{}},"after_sensitive":{{}}}}}}"#
        )
    };
    format!(
        r#"{{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{{"root_module":{{}}}},"resource_drift":[{drift}],"resource_changes":[],"prior_state":{{}},"configuration":{{}}}}"#
    )
    .into_bytes()
}

async fn write(t: &TestApp, who: &str, path: &str, body: Vec<u8>) {
    assert_status(&t.as_(who).post(path, body).send().await, StatusCode::OK);
}

fn kinds(shown: &bulkhead::operations::drift::StateDrift) -> Vec<(String, String)> {
    let mut kinds: Vec<_> = shown
        .signals
        .iter()
        .map(|s| (s.kind.clone(), s.severity.clone()))
        .collect();
    kinds.sort();
    kinds
}

fn refused(e: bulkhead::client::ClientError) -> (u16, String) {
    match e {
        bulkhead::client::ClientError::Refused { status, message } => (status, message),
        other => panic!("not a refusal: {other}"),
    }
}

#[tokio::test]
async fn a_write_raises_its_signals_with_evidence_and_an_owner_acknowledges_them() {
    let t = spawn_app().await;
    let alice = Client::new(&t.base(), t.token("alice"));
    write(&t, "alice", "dev/app", with_data(1, "L", "a", "")).await;
    // A serial jump of four, and the instance left tainted by a failed apply.
    write(&t, "alice", "dev/app", with_data(6, "L", "a", "tainted")).await;

    let shown = alice.drift_show("dev/app").await.unwrap();
    assert_eq!(
        kinds(&shown),
        vec![
            ("outside-change".into(), "notice".into()),
            ("outside-change".into(), "notice".into()),
            ("serial-jump".into(), "warning".into()),
            ("tainted".into(), "warning".into()),
        ],
        "{shown:?}"
    );
    let jump = shown
        .signals
        .iter()
        .find(|s| s.kind == "serial-jump")
        .unwrap();
    assert!(jump.evidence.contains("1 to 6"), "{}", jump.evidence);
    assert_eq!(jump.version, Some(2));
    assert!(shown.open);
    // The write's own audit record names what it raised.
    let record = t.newest_audit("dev", |r| r.version == Some(2)).await;
    let raised: Vec<&str> = record.signals.iter().map(|s| s.kind.as_str()).collect();
    assert!(
        raised.contains(&"serial-jump") && raised.contains(&"tainted"),
        "{raised:?}"
    );

    let status = alice.drift_status(Some("dev")).await.unwrap();
    assert!(status.open());
    assert_eq!(status.states.len(), 1);
    assert_eq!(status.states[0].signals.len(), 2, "only the open warnings");

    // The next apply replaces the tainted instance: its signal is resolved by that version.
    write(&t, "alice", "dev/app", with_data(7, "L", "a", "")).await;
    let shown = alice.drift_show("dev/app").await.unwrap();
    let tainted = shown.signals.iter().find(|s| s.kind == "tainted").unwrap();
    assert_eq!(tainted.resolved_by, Some(3));

    // bob (team app, the owner of dev) acknowledges the jump, with a reason.
    let bob = Client::new(&t.base(), t.token("bob"));
    let ack = Acknowledgement {
        signal: Some(jump.id),
        drift: false,
        reason: "pushed from a laptop during the outage".into(),
    };
    bob.drift_acknowledge("dev/app", &ack).await.unwrap();
    let status = alice.drift_status(Some("dev")).await.unwrap();
    assert!(!status.open(), "{status:?}");
    let record = t
        .newest_audit("dev", |r| r.action == "drift:acknowledge")
        .await;
    assert_eq!(record.principal.as_deref(), Some("user:bob"));
    assert!(record.reason.unwrap().contains("during the outage"));

    // Twice is a conflict that names who did it.
    let (status, message) = refused(bob.drift_acknowledge("dev/app", &ack).await.unwrap_err());
    assert_eq!(status, 409);
    assert!(message.contains("acknowledged by user:bob"), "{message}");
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn state_surgery_a_copied_lineage_and_a_lineage_change_are_warnings() {
    let t = spawn_app().await;
    let pat = Client::new(&t.base(), t.token("pat"));
    write(&t, "pat", "staging/net", with_data(1, "STAGING", "a", "")).await;
    // The same lineage turns up in dev: a staging state copied where it does not belong.
    write(&t, "pat", "dev/net", with_data(1, "STAGING", "a", "")).await;
    let shown = pat.drift_show("dev/net").await.unwrap();
    let shared = shown
        .signals
        .iter()
        .find(|s| s.kind == "lineage-shared")
        .expect("a lineage-shared signal");
    assert!(
        shared.evidence.contains("staging/net"),
        "{}",
        shared.evidence
    );

    // terraform state push of an edited state, under its lock: state surgery.
    let lock = t
        .as_("pat")
        .lock("dev/net")
        .id("push-1")
        .operation("state-push")
        .send()
        .await;
    assert_status(&lock, StatusCode::OK);
    let pushed = t
        .as_("pat")
        .post("dev/net", with_data(2, "STAGING", "edited", ""))
        .lock_id("push-1")
        .send()
        .await;
    assert_status(&pushed, StatusCode::OK);
    let shown = pat.drift_show("dev/net").await.unwrap();
    let surgery = shown
        .signals
        .iter()
        .find(|s| s.kind == "state-surgery")
        .expect("a state-surgery signal");
    assert!(
        surgery.evidence.contains("terraform_data.x"),
        "{}",
        surgery.evidence
    );
    assert!(!shown.signals.iter().any(|s| s.kind == "refresh-accepted"));

    // pat may force another lineage over it: recorded as a lineage change.
    let forced = t
        .as_("pat")
        .post("dev/net", with_data(3, "OTHER", "edited", ""))
        .lock_id("push-1")
        .send()
        .await;
    assert_status(&forced, StatusCode::OK);
    let shown = pat.drift_show("dev/net").await.unwrap();
    assert!(
        shown
            .signals
            .iter()
            .any(|s| s.kind == "lineage-changed" && s.severity == "warning"),
        "{shown:?}"
    );
}

#[tokio::test]
async fn a_long_lock_and_an_empty_one_are_signalled_at_release() {
    let t = spawn_app().await;
    write(&t, "alice", "dev/app", with_data(1, "L", "a", "")).await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("l1").send().await,
        StatusCode::OK,
    );
    t.clock.advance(std::time::Duration::from_secs(2 * 3600));
    assert_status(
        &t.as_("alice").unlock("dev/app").id("l1").send().await,
        StatusCode::OK,
    );
    let shown = Client::new(&t.base(), t.token("alice"))
        .drift_show("dev/app")
        .await
        .unwrap();
    let long = shown
        .signals
        .iter()
        .find(|s| s.kind == "long-lock")
        .expect("a long-lock signal");
    assert!(long.evidence.contains("2h"), "{}", long.evidence);
    assert_eq!(long.severity, "warning");
    let empty = shown
        .signals
        .iter()
        .find(|s| s.kind == "empty-lock")
        .expect("an empty-lock signal");
    assert_eq!(empty.severity, "notice");
    // A reader's plan, or a writer's, released with nothing written is no signal.
    let before = shown.signals.len();
    assert_status(
        &t.as_("alice")
            .lock("dev/app")
            .id("p1")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice")
            .unlock("dev/app")
            .id("p1")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    let shown = Client::new(&t.base(), t.token("alice"))
        .drift_show("dev/app")
        .await
        .unwrap();
    assert_eq!(shown.signals.len(), before, "{shown:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drift_report_shows_what_drifted_since_when_and_clears_when_clean() {
    let t = spawn_app().await;
    write(&t, "ci-prod", "prod/network", with_data(1, "P", "a", "")).await;
    let ci = Client::new(&t.base(), t.token("ci-prod"));
    let alice = Client::new(&t.base(), t.token("alice"));

    let first = ci
        .drift_report("prod/network", refresh_plan("a", "b"))
        .await
        .unwrap();
    assert_eq!(first.drift.count, 1);
    let drifted = &first.report.drifted[0];
    assert_eq!(drifted.drifted.address, "terraform_data.x");
    assert_eq!(drifted.drifted.how, "changed");
    let input = drifted
        .drifted
        .attributes
        .iter()
        .find(|a| a.name == "input")
        .unwrap();
    assert_eq!(
        (input.before.as_deref(), input.after.as_deref()),
        (Some("\"a\""), Some("\"b\""))
    );
    let since = drifted.since.clone();
    let record = t.last_audit("prod").await;
    assert_eq!(record.action, "drift:report");
    assert_eq!(record.drift.as_ref().map(|d| d.count), Some(1));
    assert!(
        record.drift.unwrap().new,
        "new drift is what owners are told of"
    );

    // Reported again an hour later: the same drift, since the first report, and not new.
    t.clock.advance(std::time::Duration::from_secs(3600));
    let second = ci
        .drift_report("prod/network", refresh_plan("a", "b"))
        .await
        .unwrap();
    assert_eq!(second.report.drifted[0].since, since);
    assert_eq!(second.drift.drifted_since.as_deref(), Some(since.as_str()));
    assert!(!t.last_audit("prod").await.drift.unwrap().new);

    // A reader sees it; drift status fails while it is open.
    let status = alice.drift_status(None).await.unwrap();
    assert!(status.open());
    let prod = status
        .environments
        .iter()
        .find(|e| e.environment == "prod")
        .unwrap();
    assert!(prod.reported_at.is_some());
    let out = t.cli(t.token("alice"), &["drift", "status", "--env", "prod"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("prod/network") && text.contains("1 resource drifted"),
        "{text}"
    );

    // The pipeline reconciles it; the next report is clean.
    let clean = ci
        .drift_report("prod/network", refresh_plan("a", "a"))
        .await
        .unwrap();
    assert_eq!(clean.drift.count, 0);
    assert_eq!(clean.drift.drifted_since, None);
    assert!(clean.drift.clean_at.is_some());
    let out = t.cli(t.token("alice"), &["drift", "status", "--env", "prod"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown = alice.drift_show("prod/network").await.unwrap();
    assert_eq!(shown.earlier.len(), 2);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn drift_is_acknowledged_by_the_owner_and_comes_back_when_it_changes() {
    let t = spawn_app().await;
    write(&t, "ci-prod", "prod/network", with_data(1, "P", "a", "")).await;
    let ci = Client::new(&t.base(), t.token("ci-prod"));
    ci.drift_report("prod/network", refresh_plan("a", "b"))
        .await
        .unwrap();

    // alice reads prod but does not own it: refused, and the drift stays open.
    let ack = Acknowledgement {
        signal: None,
        drift: true,
        reason: "known".into(),
    };
    let alice = Client::new(&t.base(), t.token("alice"));
    let (status, message) = refused(
        alice
            .drift_acknowledge("prod/network", &ack)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    assert!(
        message.contains("may not acknowledge") && message.contains("team:platform"),
        "{message}"
    );
    assert!(alice.drift_status(Some("prod")).await.unwrap().open());

    let pat = Client::new(&t.base(), t.token("pat"));
    let (status, _) = refused(
        pat.drift_acknowledge(
            "prod/network",
            &Acknowledgement {
                reason: "  ".into(),
                ..ack.clone()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(status, 400, "a reason is required");
    pat.drift_acknowledge("prod/network", &ack).await.unwrap();
    assert!(!alice.drift_status(Some("prod")).await.unwrap().open());

    // The same drift reported again stays acknowledged; other drift opens it again.
    ci.drift_report("prod/network", refresh_plan("a", "b"))
        .await
        .unwrap();
    assert!(!alice.drift_status(Some("prod")).await.unwrap().open());
    let mut plan: serde_json::Value = serde_json::from_slice(&refresh_plan("a", "b")).unwrap();
    let mut other = plan["resource_drift"][0].clone();
    other["address"] = "terraform_data.y".into();
    other["name"] = "y".into();
    plan["resource_drift"].as_array_mut().unwrap().push(other);
    let reported = ci
        .drift_report("prod/network", serde_json::to_vec(&plan).unwrap())
        .await
        .unwrap();
    assert_eq!(reported.drift.count, 2);
    assert!(alice.drift_status(Some("prod")).await.unwrap().open());
}

#[tokio::test]
async fn refused_reports_store_nothing() {
    let small_plans = CONFIG.replace(
        "write = [\"service:ci-prod\"]\n}",
        "write = [\"service:ci-prod\"]\n  max_plan_size = \"4KiB\"\n}",
    );
    assert_ne!(small_plans, CONFIG);
    let t = spawn_app_with(&small_plans).await;
    write(&t, "ci-prod", "prod/network", with_data(1, "P", "a", "")).await;
    let alice = Client::new(&t.base(), t.token("alice"));
    let ci = Client::new(&t.base(), t.token("ci-prod"));

    // A developer may not report drift in prod (its pipeline does).
    let (status, message) = refused(
        alice
            .drift_report("prod/network", refresh_plan("a", "b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 403);
    assert!(message.contains("service:ci-prod"), "{message}");
    // Not a plan: a state file, and text.
    let (status, message) = refused(
        ci.drift_report("prod/network", with_data(2, "P", "a", ""))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    assert!(message.contains("terraform show -json"), "{message}");
    let (status, _) = refused(
        ci.drift_report("prod/network", b"not json".to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 400);
    // A state this backend does not hold.
    let (status, message) = refused(
        ci.drift_report("prod/netwrk", refresh_plan("a", "b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status, 404);
    assert!(message.contains("no state netwrk"), "{message}");
    // Over the environment's plan size.
    let huge = vec![b' '; 8 << 10];
    let (status, _) = refused(ci.drift_report("prod/network", huge).await.unwrap_err());
    assert_eq!(status, 413);
    // eve reads nothing, and sees nothing.
    let eve = Client::new(&t.base(), t.token("eve"));
    let (status, _) = refused(eve.drift_show("prod/network").await.unwrap_err());
    assert_eq!(status, 403);
    assert!(eve
        .drift_status(None)
        .await
        .unwrap()
        .environments
        .is_empty());

    let shown = alice.drift_show("prod/network").await.unwrap();
    assert!(shown.drift.is_none() && shown.report.is_none(), "{shown:?}");
    let refusals: Vec<_> = t
        .audit(Some("prod"))
        .await
        .into_iter()
        .filter(|r| r.action == "drift:report")
        .map(|r| (r.decision.as_str(), r.status))
        .collect();
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(refusals.iter().all(|(d, _)| *d == "deny"), "{refusals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_line_reports_shows_and_acknowledges() {
    let t = spawn_app().await;
    write(&t, "ci-prod", "prod/network", with_data(1, "P", "a", "")).await;
    std::fs::write(t.dir.path().join("drift.json"), refresh_plan("a", "b")).unwrap();
    let out = t.cli(
        t.token("ci-prod"),
        &["drift", "report", "prod/network", "--plan", "drift.json"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("terraform_data.x changed"), "{text}");

    let out = t.cli(t.token("pat"), &["drift", "show", "prod/network"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("input: \"a\" -> \"b\""), "{text}");

    // Neither --signal nor --drift: a usage error.
    let out = t.cli(
        t.token("pat"),
        &["drift", "ack", "prod/network", "--reason", "x"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = t.cli(
        t.token("pat"),
        &[
            "drift",
            "ack",
            "prod/network",
            "--drift",
            "--reason",
            "INFRA-212",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t.cli(t.token("pat"), &["drift", "status", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["states"][0]["drift"]["acknowledged_by"], "user:pat");
    // A plan file that is not there: exit 2, with the command that makes one.
    let out = t.cli(
        t.token("ci-prod"),
        &["drift", "report", "prod/network", "--plan", "missing.json"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("terraform plan -refresh-only"));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_of_a_protected_environment_without_a_recent_drift_report() {
    let p = crate::changes::spawn_protected("24h").await;
    let t = &p.t;
    let out = t.cli(
        t.token("pat"),
        &[
            "check",
            "-c",
            "bulkhead.hcl",
            "--server",
            &t.base(),
            "--format",
            "json",
        ],
    );
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let unreported: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == "drift-unreported")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert_eq!(unreported.len(), 2, "staging and prod: {unreported:?}");
    assert!(
        unreported.iter().any(|m| m.contains("prod has never")),
        "{unreported:?}"
    );
    // Without a server, the check is not made.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["check", "-c", "bulkhead.hcl", "--format", "json"])
        .current_dir(t.dir.path())
        .env_remove("BULKHEAD_ADDR")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("drift-unreported"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("drift reports were not checked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
