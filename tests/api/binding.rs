//! An approval covers exactly what is applied: a change bound to the commit it was planned
//! from (the pipeline's verified OIDC `sha` claim) and to its plan (the pipeline attests with
//! its own saved plan), a new plan dismissing the approvals given before, and writes beyond
//! the approved plan recorded loudly as `diverged`. Every refusal names both sides and the way
//! on, and changes nothing.

use bulkhead::audit::Outcome;
use bulkhead::client::{Client, NewChange};
use reqwest::StatusCode;

use crate::changes::{protected_config, refusal, Issuer, Protected};
use crate::helpers::*;

pub const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The protected config of `changes`, with prod's pipeline bound by `bind`.
pub fn bound_config(jwks: &str, bind: &str) -> String {
    let config = protected_config(jwks, "24h");
    let unbound = r#"pipeline { branches = ["main"] }"#;
    assert!(config.contains(unbound));
    config.replace(
        unbound,
        &format!("pipeline {{\n    branches = [\"main\"]\n    bind     = {bind}\n  }}"),
    )
}

/// The protected setup of `changes`, with prod's pipeline bound by `bind`.
pub async fn spawn_bound(bind: &str) -> Protected {
    let issuer = Issuer::new();
    let t = spawn_app_with(&bound_config(&issuer.jwks_path(), bind)).await;
    Protected { t, issuer }
}

/// A plan of `terraform_data.a` with `input`, as `terraform show -json` prints it, at
/// `timestamp`; `extra` adds resource changes.
pub fn plan(input: &str, timestamp: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"format_version":"1.2","terraform_version":"1.11.4","timestamp":"{timestamp}","planned_values":{{}},
  "resource_changes":[{{"address":"terraform_data.a","mode":"managed","type":"terraform_data","name":"a",
    "change":{{"actions":["create"],"before":null,"after":{{"input":"{input}","triggers_replace":null}},
    "after_unknown":{{"id":true,"output":true}},"before_sensitive":false,"after_sensitive":{{}}}}}}{extra}]}}"#
    )
    .into_bytes()
}

impl Protected {
    /// The pipeline's OIDC token from main, running `sha`.
    pub fn jwt(&self, sha: Option<&str>) -> String {
        self.issuer.token("main", |c| {
            if let Some(sha) = sha {
                c["sha"] = sha.into();
            }
        })
    }

    pub async fn propose_plan(
        &self,
        plan: Vec<u8>,
        commit: Option<&str>,
    ) -> Result<String, String> {
        let new = NewChange {
            environment: "prod",
            state: "network",
            title: Some("a"),
            branch: Some("main"),
            commit,
        };
        self.client("alice")
            .create_change(&new, plan)
            .await
            .map(|c| c.id)
            .map_err(|e| e.to_string())
    }

    pub async fn approved_plan(&self, plan: Vec<u8>, commit: Option<&str>) -> String {
        let id = self.propose_plan(plan, commit).await.unwrap();
        self.client("pat")
            .decide(&id, "approve", None)
            .await
            .unwrap();
        id
    }

    async fn lock_change(&self, jwt: &str, id: &str, lock_id: &str) -> reqwest::Response {
        self.t
            .as_("ci-prod")
            .with_secret(jwt)
            .lock(format!("prod/network?change={id}"))
            .id(lock_id)
            .send()
            .await
    }

    async fn not_locked(&self) {
        let status = self.client("bob").status().await.unwrap();
        let prod = status.iter().find(|e| e.environment == "prod").unwrap();
        assert!(prod.states.iter().all(|s| s.lock.is_none()), "{prod:?}");
        assert!(self.t.versions("prod", "network").await.is_empty());
    }
}

#[tokio::test]
async fn commit_binding_refuses_a_lock_from_another_commit_naming_both() {
    let b = spawn_bound("\"commit\"").await;
    // A change in an environment bound to commits must name one.
    let refused = b.propose_plan(plan("x", "t1", ""), None).await.unwrap_err();
    assert!(
        refused.contains("binds each apply to the commit") && refused.contains("--commit"),
        "{refused}"
    );
    let id = b.approved_plan(plan("x", "t1", ""), Some(COMMIT_A)).await;

    // The pipeline runs another commit: refused at the lock, naming both and the way on.
    let sentence = refusal(b.lock_change(&b.jwt(Some(COMMIT_B)), &id, "L1").await).await;
    assert!(
        sentence.contains(&format!("planned from commit {COMMIT_A}"))
            && sentence.contains(&format!("this pipeline runs commit {COMMIT_B}"))
            && sentence.contains("bulkhead change update prod-1")
            && sentence.contains("approved again"),
        "{sentence}"
    );
    // Credentials that prove no commit (a token without `sha`, a static token) are refused.
    let sentence = refusal(b.lock_change(&b.jwt(None), &id, "L2").await).await;
    assert!(sentence.contains("prove no commit"), "{sentence}");
    let denied = b.t.last_audit("prod").await;
    assert_eq!(denied.decision, Outcome::Deny);
    assert!(denied.reason.unwrap().contains("prove no commit"));
    b.not_locked().await;

    // The commit planned from, in any case, is the one applied.
    let upper = COMMIT_A.to_ascii_uppercase();
    let jwt = b.jwt(Some(&upper));
    assert_status(&b.lock_change(&jwt, &id, "L3").await, StatusCode::OK);
}

#[tokio::test]
async fn plan_binding_needs_a_matching_attestation_by_the_very_identity_that_locks() {
    let b = spawn_bound("\"plan\"").await;
    let id = b
        .approved_plan(plan("x", "2026-12-01T10:00:00Z", ""), None)
        .await;
    let main = b.jwt(None);
    let pipeline = Client::new(&b.t.base(), &main);

    // Skipping the attestation: the apply's lock is refused with what to run.
    let sentence = refusal(b.lock_change(&main, &id, "L1").await).await;
    assert!(
        sentence.contains("no pipeline has attested")
            && sentence.contains("bulkhead change attest prod-1 --plan plan.json"),
        "{sentence}"
    );
    // The pipeline's own plan (`terraform plan -out tfplan`) still takes its plan lock.
    let plan_lock =
        b.t.as_("ci-prod")
            .with_secret(&main)
            .lock(format!("prod/network?change={id}"))
            .id("P1")
            .operation("OperationTypePlan")
            .send()
            .await;
    assert_status(&plan_lock, StatusCode::OK);

    // Another plan: refused, naming what differs; nothing attested.
    let extra = r#",{"address":"terraform_data.b","change":{"actions":["create"],"before":null,"after":{"input":"y"}}}"#;
    let refused = pipeline
        .attest(&id, plan("other", "t", extra))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("terraform_data.a (changed differently)")
            && refused.contains("terraform_data.b (only in the new plan)")
            && refused.contains("nothing was attested")
            && refused.contains("bulkhead change update prod-1"),
        "{refused}"
    );
    let denied = b.t.last_audit("prod").await;
    assert_eq!(
        (denied.action.as_str(), denied.decision),
        ("change:attest", Outcome::Deny)
    );
    assert!(denied.reason.unwrap().contains("terraform_data.b"));
    assert_eq!(b.client("bob").change(&id).await.unwrap().attestation, None);

    // A reader may not attest: it is not the one to apply.
    let reader = b.client("bob").attest(&id, plan("x", "t", "")).await;
    assert!(reader.unwrap_err().to_string().contains("403"));

    // The same effect planned again (another timestamp, another key order) matches.
    let attested = pipeline
        .attest(&id, plan("x", "2026-12-03T08:00:00Z", ""))
        .await
        .unwrap();
    let by = attested.attestation.expect("attested");
    assert_eq!(
        (by.principal.as_str(), by.branch.as_deref()),
        ("service:ci-prod", Some("main"))
    );

    // Another workflow of the repository, on main too, is not the identity that attested.
    let other = b.issuer.token("main", |c| {
        c["sub"] = "repo:acme/infra:environment:prod".into();
    });
    let sentence = refusal(b.lock_change(&other, &id, "L2").await).await;
    assert!(
        sentence.contains("attested by service:ci-prod (branch main)")
            && sentence.contains("only the identity that attested may apply"),
        "{sentence}"
    );
    assert_status(&b.lock_change(&main, &id, "L3").await, StatusCode::OK);
}

#[tokio::test]
async fn a_new_plan_dismisses_the_approvals_and_the_attestation_and_only_its_author_gives_it() {
    let b = spawn_bound("[\"commit\", \"plan\"]").await;
    let id = b.approved_plan(plan("x", "t", ""), Some(COMMIT_A)).await;
    let main = b.jwt(Some(COMMIT_A));
    let pipeline = Client::new(&b.t.base(), &main);
    pipeline.attest(&id, plan("x", "t", "")).await.unwrap();

    let other = b
        .client("bob")
        .replan(&id, plan("y", "t", ""), Some(COMMIT_B))
        .await;
    assert!(
        other.unwrap_err().to_string().contains("only its author"),
        "another than the author replaced the plan"
    );
    let kept = b.client("bob").change(&id).await.unwrap();
    assert_eq!((kept.revision, kept.readiness.as_str()), (1, "approved"));

    let replaced = b
        .client("alice")
        .replan(&id, plan("y", "t", ""), Some(COMMIT_B))
        .await
        .unwrap();
    assert_eq!(replaced.revision, 2);
    assert_eq!(replaced.commit.as_deref(), Some(COMMIT_B));
    assert!(replaced.approvals.is_empty() && replaced.attestation.is_none());
    assert_eq!(replaced.readiness, "pending");
    let record = b.t.last_audit("prod").await;
    assert_eq!(record.action, "change:update");
    let reason = record.reason.unwrap();
    assert!(
        reason.contains("revision 2") && reason.contains("approvals dismissed: user:pat"),
        "{reason}"
    );

    // Approved again, the old plan no longer attests; the new one does, from the new commit.
    b.client("pat").decide(&id, "approve", None).await.unwrap();
    let stale = pipeline.attest(&id, plan("x", "t", "")).await.unwrap_err();
    assert!(stale.to_string().contains("revision 2"), "{stale}");
    let sentence = refusal(b.lock_change(&main, &id, "L1").await).await;
    assert!(sentence.contains(COMMIT_B), "{sentence}");
    let new_main = b.jwt(Some(COMMIT_B));
    Client::new(&b.t.base(), &new_main)
        .attest(&id, plan("y", "t", ""))
        .await
        .unwrap();
    assert_status(&b.lock_change(&new_main, &id, "L2").await, StatusCode::OK);

    // During its apply, the plan cannot be replaced.
    let during = b
        .client("alice")
        .replan(&id, plan("z", "t", ""), Some(COMMIT_B))
        .await
        .unwrap_err();
    assert!(
        during.to_string().contains("being applied (lock L2"),
        "{during}"
    );
    assert_eq!(b.client("bob").change(&id).await.unwrap().revision, 2);
}

/// A state holding `terraform_data` resources named `names`.
pub fn state_with(serial: i64, names: &[&str]) -> Vec<u8> {
    let resources: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            serde_json::json!({"mode": "managed", "type": "terraform_data", "name": n,
              "provider": "provider[\"terraform.io/builtin/terraform\"]",
              "instances": [{"schema_version": 0, "attributes": {"id": n, "input": "x"}}]})
        })
        .collect();
    serde_json::json!({"version": 4, "terraform_version": "1.11.4", "serial": serial,
      "lineage": "L", "outputs": {}, "resources": resources})
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_beyond_the_plan_is_stored_and_the_change_diverges_loudly() {
    // No binding: what diverges is what the pipeline applied, whatever it attested.
    let b = crate::changes::spawn_protected("24h").await;
    let id = b.approved_plan(plan("x", "t", ""), None).await;
    let main = b.jwt(None);
    let path = format!("prod/network?change={id}");
    let pipeline = || b.t.as_("ci-prod").with_secret(&main);
    assert_status(
        &pipeline().lock(&path).id("L1").send().await,
        StatusCode::OK,
    );
    // The planned resource first: nothing beyond the plan.
    let first = pipeline()
        .post(&path, state_with(1, &["a"]))
        .lock_id("L1")
        .send()
        .await;
    assert_status(&first, StatusCode::OK);
    assert!(b
        .client("bob")
        .change(&id)
        .await
        .unwrap()
        .diverged
        .is_empty());
    // Then one it did not plan, and a data source, which is read on every run.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&state_with(2, &["a", "extra"])).unwrap();
    doc["resources"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
        "mode": "data", "type": "terraform_remote_state", "name": "net",
        "instances": [{"attributes": {"backend": "local"}}]}));
    let beyond = pipeline()
        .post(&path, doc.to_string().into_bytes())
        .lock_id("L1")
        .send()
        .await;
    assert_status(&beyond, StatusCode::OK);
    assert_status(
        &pipeline().unlock(&path).id("L1").send().await,
        StatusCode::OK,
    );

    // Stored: the state is the truth about the infrastructure.
    let versions = b.t.versions("prod", "network").await;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].beyond_plan, vec!["terraform_data.extra"]);
    let change = b.client("bob").change(&id).await.unwrap();
    assert_eq!(change.diverged, vec!["terraform_data.extra"]);
    assert_eq!(change.readiness, "applied");
    let write =
        b.t.newest_audit("prod", |r| r.action == "state:write")
            .await;
    assert!(
        write.reason.as_deref().unwrap_or_default().contains(
            "DIVERGED: change prod-1 wrote beyond its approved plan: terraform_data.extra"
        ),
        "{write:?}"
    );
    let status = b.client("bob").status().await.unwrap();
    let prod = status.iter().find(|e| e.environment == "prod").unwrap();
    assert_eq!(prod.diverged_changes, vec!["prod-1"]);

    // Shown loudly, and a CI step that shows the change fails.
    let cli = |args: &[&str]| b.t.cli(b.t.token("bob"), args);
    let shown = cli(&["change", "show", &id]);
    assert_eq!(shown.status.code(), Some(1));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("!! DIVERGED: writes under this change touched 1 resource(s) beyond its approved plan: terraform_data.extra"),
        "{text}"
    );
    let history = cli(&["state", "history", "prod/network"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(
        text.contains("!! DIVERGED: beyond its change's plan: terraform_data.extra"),
        "{text}"
    );
    let status = cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("!! DIVERGED: writes under prod-1"), "{text}");
    assert_audit_verifies(b.t.dir.path()).await;
}

#[tokio::test]
async fn fingerprints_never_reveal_a_plans_sensitive_values() {
    let b = spawn_bound("\"plan\"").await;
    let secret = "hunter2-sensitive-value";
    let id = b.approved_plan(plan(secret, "t", ""), None).await;
    let main = b.jwt(None);
    Client::new(&b.t.base(), &main)
        .attest(&id, plan(secret, "t2", ""))
        .await
        .unwrap();
    // Not in what the API shows, nor in the audit log.
    let shown = serde_json::to_string(&b.client("bob").change(&id).await.unwrap()).unwrap();
    assert!(!shown.contains(secret), "{shown}");
    for r in b.t.audit(Some("prod")).await {
        assert!(!serde_json::to_string(&r).unwrap().contains(secret));
    }
    // Nor anywhere in the database files.
    if on_postgres() {
        println!("the database files are checked on SQLite only");
        return;
    }
    let mut files = 0;
    for entry in walk(&b.t.dir.path().join("data")) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the plan's value",
            entry.display()
        );
    }
    assert!(files > 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// `bulkhead policy explain` on the server's host, with `args` after the common ones: its exit
/// code and what it printed on stdout (its log goes to stderr).
async fn explain(t: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec![
        "policy",
        "explain",
        "--config",
        "bulkhead.hcl",
        "--principal",
        "ci-prod",
        "--action",
        "state:lock",
        "--env",
        "prod",
        "--operation",
        "OperationTypeApply",
        "--branch",
        "main",
    ];
    all.extend(args);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(&all)
        .current_dir(t.dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        !out.stdout.is_empty(),
        "explain printed nothing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn explain_shows_the_binding_and_refuses_the_lock_as_the_server_does() {
    let b = spawn_bound("[\"commit\", \"plan\"]").await;
    let id = b.approved_plan(plan("x", "t", ""), Some(COMMIT_A)).await;
    let server = refusal(b.lock_change(&b.jwt(Some(COMMIT_B)), &id, "L1").await).await;

    let (code, json) = explain(
        &b.t,
        &["--change", &id, "--commit", COMMIT_B, "--format", "json"],
    )
    .await;
    assert_eq!(code, Some(1), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["refusal"].as_str(), Some(server.as_str()));
    let binding = json["binding"].to_string();
    assert!(
        binding.contains("binds each apply to its change's commit and plan")
            && binding.contains(&format!("planned from commit {COMMIT_A}"))
            && binding.contains("no pipeline has attested revision 1 of change prod-1"),
        "{binding}"
    );

    // Attested, from the right commit: explain allows what the server allows.
    let main = b.jwt(Some(COMMIT_A));
    Client::new(&b.t.base(), &main)
        .attest(&id, plan("x", "t", ""))
        .await
        .unwrap();
    let subject = "repo:acme/infra:ref:refs/heads/main";
    let (code, text) = explain(
        &b.t,
        &["--change", &id, "--commit", COMMIT_A, "--subject", subject],
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("binding: revision 1 of change prod-1's plan was attested by service:ci-prod (branch main)"),
        "{text}"
    );
    assert_status(&b.lock_change(&main, &id, "L2").await, StatusCode::OK);
}
