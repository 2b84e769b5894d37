//! Write authority under attack: a lock ID carries no authority, DELETE and rollback go
//! through the change process, a closed change ends its apply's grant, and `policy explain`
//! gives the server's verdict. Every refusal is checked to leave the stored data unchanged.

use reqwest::StatusCode;

use crate::changes::{refusal, spawn_protected, Protected};
use crate::helpers::*;

/// An apply under way: `network`'s approved change, locked as `lock_id` by the main branch's
/// pipeline. Returns the change, the pipeline's token and the backend path naming the change.
pub async fn apply_under_way(p: &Protected, lock_id: &str) -> (String, String, String) {
    let change = p.approved("network").await;
    let main = p.issuer.token("main", |_| {});
    let path = format!("prod/network?change={change}");
    assert_status(
        &p.pipeline(&main).lock(&path).id(lock_id).send().await,
        StatusCode::OK,
    );
    (change, main, path)
}

/// pat deletes prod's `network` under a break-glass grant, closed again after.
pub async fn delete_under_breakglass(p: &Protected) {
    let pat = p.client("pat");
    let grant = pat
        .open_breakglass("prod", "reset", Some("1h"))
        .await
        .unwrap();
    let delete = p.t.as_("pat").delete("prod/network").send().await;
    assert_status(&delete, StatusCode::OK);
    pat.close_breakglass(&grant.id).await.unwrap();
}

/// What an attack could have changed: the state's versions, its lock, and the changes.
pub async fn snapshot(p: &Protected, state: &str) -> (Vec<String>, Option<String>, String) {
    let versions =
        p.t.versions("prod", state)
            .await
            .into_iter()
            .map(|v| format!("{} {} {:?}", v.version, v.sha256, v.change_number))
            .collect();
    let lock =
        p.t.app
            .stores
            .environment("prod")
            .unwrap()
            .held_lock(state)
            .await
            .unwrap()
            .map(|h| format!("{} {} {:?}", h.lock_id, h.principal, h.branch));
    let changes = p.client("pat").changes(Some("prod"), None).await.unwrap();
    let changes = serde_json::to_string(&changes.changes).unwrap();
    (versions, lock, changes)
}

#[tokio::test]
async fn a_lock_id_lends_no_authority_to_another_identity_of_the_same_service() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "MAIN").await;
    let feature = p.issuer.token("feature-x", |_| {});
    let before = snapshot(&p, "network").await;

    // The feature branch's token of the same service, and its static token, present the lock
    // ID that readers can see.
    let forged = p
        .pipeline(&feature)
        .post(&path, state_doc(1, "X", ""))
        .lock_id("MAIN")
        .send()
        .await;
    assert_status(&forged, StatusCode::FORBIDDEN);
    let text = forged.text().await.unwrap();
    assert!(
        text.contains("service:ci-prod may not write prod (owner: team:platform) now: lock MAIN was taken by service:ci-prod (branch main), and these credentials are service:ci-prod (branch feature-x)"),
        "{text}"
    );
    let static_token =
        p.t.as_("ci-prod")
            .post("prod/network", state_doc(1, "X", ""))
            .lock_id("MAIN")
            .send()
            .await;
    assert_status(&static_token, StatusCode::FORBIDDEN);
    let stolen_unlock = p.pipeline(&feature).unlock(&path).id("MAIN").send().await;
    assert_status(&stolen_unlock, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&p, "network").await, before);

    let refused = p.t.newest_audit("prod", |r| r.status == Some(403)).await;
    assert_eq!(refused.action, "state:force-unlock");
    assert_eq!(refused.branch.as_deref(), Some("feature-x"));

    // The identity that took the lock writes and releases it.
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("MAIN")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);
    assert_status(
        &p.pipeline(&main).unlock(&path).id("MAIN").send().await,
        StatusCode::OK,
    );
    let applied = p.client("pat").change(&change).await.unwrap();
    assert_eq!(applied.applied_version, Some(1));
}

#[tokio::test]
async fn delete_in_a_protected_environment_needs_a_change() {
    let p = spawn_protected("24h").await;
    let change = p.approved("network").await;
    let main = p.issuer.token("main", |_| {});
    p.ci_apply(&change, &main, "L1", state_doc(1, "P", ""))
        .await;
    // The owner team may delete, but not outside the change process.
    let before = snapshot(&p, "network").await;
    let delete = p.t.as_("pat").delete("prod/network").send().await;
    assert_status(&delete, StatusCode::FORBIDDEN);
    let text = delete.text().await.unwrap();
    assert!(
        text.contains("user:pat may not write prod") && text.contains("no change request named"),
        "{text}"
    );
    assert_eq!(snapshot(&p, "network").await, before);
    assert_eq!(
        p.t.stored("prod", "network").await,
        Some(state_doc(1, "P", ""))
    );

    // A change is applied by the pipeline from its branch, not by a person.
    let second = p.approved("network").await;
    let delete =
        p.t.as_("pat")
            .delete(format!("prod/network?change={second}"))
            .send()
            .await;
    assert_status(&delete, StatusCode::FORBIDDEN);
    assert!(delete
        .text()
        .await
        .unwrap()
        .contains("applied only from branch main"));
    assert_eq!(snapshot(&p, "network").await.0, before.0);

    // Under break-glass the deletion is a version, loudly recorded.
    let grant = p
        .client("pat")
        .open_breakglass("prod", "state must go", Some("1h"))
        .await
        .unwrap();
    assert_status(
        &p.t.as_("pat").delete("prod/network").send().await,
        StatusCode::OK,
    );
    let versions = p.t.versions("prod", "network").await;
    assert!(versions[1].deleted);
    let record =
        p.t.newest_audit("prod", |r| r.action == "state:delete")
            .await;
    assert_eq!(record.breakglass.as_deref(), Some(grant.id.as_str()));
}

#[tokio::test]
async fn a_change_rejected_during_its_apply_ends_the_grant() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    p.client("pat")
        .decide(&change, "reject", Some("wrong window"))
        .await
        .unwrap();
    let before = snapshot(&p, "network").await;
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    let text = post.text().await.unwrap();
    assert!(
        text.contains(&format!("change {change} was rejected")),
        "{text}"
    );
    assert_eq!(snapshot(&p, "network").await, before);
    // The holder can still release its lock; the change stays rejected, and no version names it.
    assert_status(
        &p.pipeline(&main).unlock(&path).id("L").send().await,
        StatusCode::OK,
    );
    let rejected = p.client("pat").change(&change).await.unwrap();
    assert_eq!(
        (rejected.readiness.as_str(), rejected.applied_version),
        ("rejected", None)
    );
    assert!(p.t.versions("prod", "network").await.is_empty());
}

#[tokio::test]
async fn a_change_whose_apply_has_written_cannot_be_rejected() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);
    let before = snapshot(&p, "network").await;
    for verb in ["reject", "cancel"] {
        let refused = p
            .client("pat")
            .decide(&change, verb, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("has written version 1 of network already"),
            "{refused}"
        );
    }
    assert_eq!(snapshot(&p, "network").await, before);
    assert_status(
        &p.pipeline(&main).unlock(&path).id("L").send().await,
        StatusCode::OK,
    );
    let applied = p.client("pat").change(&change).await.unwrap();
    assert_eq!(
        (applied.readiness.as_str(), applied.applied_version),
        ("applied", Some(1))
    );
}

#[tokio::test]
async fn a_changes_lock_authorizes_writes_for_its_apply_window_only() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    // The lock was taken long ago, past the default window of one hour.
    exec_sql(
        p.t.dir.path(),
        "prod",
        "UPDATE locks SET created_at = '2020-01-01T00:00:00.000000Z'",
    )
    .await;
    let before = snapshot(&p, "network").await;
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    let text = post.text().await.unwrap();
    assert!(text.contains(&format!("the apply window of change {change} ended at 2020-01-01T01:00:00Z (1h after lock L was taken)")), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn rollback_in_a_protected_environment_needs_a_change_and_across_lineages_force_write() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    p.ci_apply(&first, &main, "L1", state_doc(1, "P", "")).await;
    // A deletion under break-glass, then a state of another lineage.
    delete_under_breakglass(&p).await;
    let third = p.approved("network").await;
    p.ci_apply(&third, &main, "L3", state_doc(1, "Q", "")).await;
    let before = snapshot(&p, "network").await;

    let rollback = |query: String| {
        p.t.client
            .post(format!("{}/v1/history/prod/network?{query}", p.t.base()))
            .basic_auth("ci-prod", Some(main.clone()))
            .send()
    };
    // Without a change.
    let refused = rollback("rollback_to=1".into()).await.unwrap();
    assert_status(&refused, StatusCode::FORBIDDEN);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("no change request named"));
    // With one, but version 1 is of lineage P and the state is of lineage Q now.
    let fourth = p.approved("network").await;
    let refused = rollback(format!("rollback_to=1&change={fourth}"))
        .await
        .unwrap();
    assert_status(&refused, StatusCode::CONFLICT);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("lineage P differs") && text.contains("forcing it needs state:force-write"),
        "{text}"
    );
    assert_eq!(snapshot(&p, "network").await.0, before.0);
    let unused = p.client("pat").change(&fourth).await.unwrap();
    assert_eq!(unused.readiness, "approved");
}

#[tokio::test]
async fn serials_near_the_end_of_the_range_are_refused_with_a_sentence() {
    let t = spawn_app().await;
    let huge = t
        .as_("alice")
        .post("dev/app", state_doc(i64::MAX, "L", ""))
        .send()
        .await;
    assert_status(&huge, StatusCode::BAD_REQUEST);
    assert!(huge
        .text()
        .await
        .unwrap()
        .contains("a whole number from 0 to"));
    assert!(t.versions("dev", "app").await.is_empty());

    let max = bulkhead::state::MAX_SERIAL;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(max, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let rollback = t
        .client
        .post(format!("{}/v1/history/dev/app?rollback_to=1", t.base()))
        .basic_auth("alice", Some(t.token("alice")))
        .send()
        .await
        .unwrap();
    assert_status(&rollback, StatusCode::CONFLICT);
    assert!(rollback
        .text()
        .await
        .unwrap()
        .contains("the highest a state may have"));
    assert_eq!(t.versions("dev", "app").await.len(), 2);
}

#[tokio::test]
async fn policy_explain_grants_a_readers_plan_lock_as_the_server_does() {
    let t = spawn_app().await;
    let lock = t
        .as_("alice")
        .lock("prod/network")
        .id("PLAN")
        .operation("OperationTypePlan")
        .send()
        .await;
    assert_status(&lock, StatusCode::OK);
    let explain = |operation: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(["policy", "explain", "--config", "bulkhead.hcl"])
            .args([
                "--principal",
                "alice",
                "--action",
                "state:lock",
                "--env",
                "prod",
            ])
            .args(["--state", "network", "--operation", operation])
            .current_dir(t.dir.path())
            .output()
            .unwrap()
    };
    let out = explain("OperationTypePlan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ALLOW") && text.contains("read-only plan lock"),
        "{text}"
    );
    let recorded = t.newest_audit("prod", |r| r.action == "state:lock").await;
    assert!(
        text.contains(&format!("decided by: {}", recorded.policy.unwrap())),
        "{text}"
    );

    let out = explain("OperationTypeApply");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let refused = t.as_("alice").lock("prod/network").id("APPLY").send().await;
    let server_says = refusal(refused).await;
    assert!(
        text.contains(&format!("the refused caller reads: {server_says}")),
        "{text}"
    );
}
