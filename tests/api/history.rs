//! History, diff, rollback and status, over the API and the command line.

use bulkhead::client::Client;
use reqwest::StatusCode;

use crate::changes::spawn_protected;
use crate::helpers::*;

/// A state with one database whose password is sensitive, plus `extra` resources.
fn with_db(serial: i64, size: &str, password: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"version":4,"serial":{serial},"lineage":"L","resources":[{{"mode":"managed","type":"aws_db_instance","name":"main","instances":[{{"attributes":{{"size":"{size}","password":"{password}"}},"sensitive_attributes":[[{{"type":"get_attr","value":"password"}}]]}}]}}{extra}]}}"#
    )
    .into_bytes()
}

const CACHE: &str = r#",{"mode":"managed","type":"terraform_data","name":"cache","instances":[{"attributes":{"input":"x"}}]}"#;

#[tokio::test]
async fn history_show_and_diff_name_who_changed_what_with_secrets_masked() {
    let t = spawn_app().await;
    let alice = Client::new(&t.base(), t.token("alice"));
    assert_status(
        &t.as_("alice")
            .post("dev/app", with_db(1, "small", "hunter2", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("bob")
            .post("dev/app", with_db(2, "large", "swordfish", CACHE))
            .send()
            .await,
        StatusCode::OK,
    );
    let history = alice.history("dev/app").await.unwrap();
    let rows: Vec<_> = history
        .iter()
        .map(|e| {
            (
                e.meta.version,
                e.meta.principal.as_str(),
                e.added,
                e.changed,
                e.removed,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![(1, "user:alice", 1, 0, 0), (2, "user:bob", 1, 1, 0)]
    );
    // Versions stored without fingerprints (written by an older bulkhead) are counted from
    // their contents, with the same result.
    let unguard = if on_postgres() {
        "ALTER TABLE versions DISABLE TRIGGER versions_append_only; "
    } else {
        "DROP TRIGGER versions_no_update; "
    };
    exec_sql(
        t.dir.path(),
        "dev",
        &format!("{unguard}UPDATE versions SET resources = NULL"),
    )
    .await;
    let counted: Vec<_> = alice
        .history("dev/app")
        .await
        .unwrap()
        .iter()
        .map(|e| (e.added, e.changed, e.removed))
        .collect();
    assert_eq!(counted, vec![(1, 0, 0), (1, 1, 0)]);

    let diff = alice.diff("dev/app", 1, 2).await.unwrap();
    assert_eq!(diff.added, vec!["terraform_data.cache"]);
    assert_eq!(diff.changed[0].address, "aws_db_instance.main");
    let text = serde_json::to_string(&diff).unwrap();
    assert!(
        text.contains("(sensitive)") && !text.contains("hunter2") && !text.contains("swordfish"),
        "{text}"
    );

    assert_eq!(
        alice.version("dev/app", 1).await.unwrap(),
        with_db(1, "small", "hunter2", "")
    );
    // Reading history is reading: eve may not.
    let eve = Client::new(&t.base(), t.token("eve"))
        .history("dev/app")
        .await
        .unwrap_err()
        .to_string();
    assert!(eve.contains("user:eve may not read dev"), "{eve}");
}

#[tokio::test]
async fn rollback_writes_the_old_content_as_a_new_version() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", with_db(1, "small", "a", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice")
            .post("dev/app", with_db(2, "large", "b", CACHE))
            .send()
            .await,
        StatusCode::OK,
    );
    let answer = Client::new(&t.base(), t.token("bob"))
        .rollback("dev/app", 1, None)
        .await
        .unwrap();
    assert_eq!(
        (answer["version"].as_i64(), answer["serial"].as_i64()),
        (Some(3), Some(3))
    );
    let versions = t.versions("dev", "app").await;
    assert_eq!(versions.len(), 3);
    assert_eq!(
        (
            versions[2].principal.as_str(),
            versions[2].operation.as_deref()
        ),
        ("user:bob", Some("rollback"))
    );
    let now: serde_json::Value =
        serde_json::from_slice(&t.stored("dev", "app").await.unwrap()).unwrap();
    let then: serde_json::Value = serde_json::from_slice(&with_db(1, "small", "a", "")).unwrap();
    assert_eq!(now["resources"], then["resources"]);
    assert_eq!(now["serial"], 3);
    let last = t.last_audit("dev").await;
    assert_eq!(
        (last.action.as_str(), last.version),
        ("state:rollback", Some(3))
    );
    assert_eq!(
        last.reason.as_deref(),
        Some("rolled back to version 1 (serial 3)")
    );
}

#[tokio::test]
async fn rollback_is_refused_without_the_right_and_while_locked() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", with_db(1, "small", "a", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice")
            .post("dev/app", with_db(2, "large", "b", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let eve = Client::new(&t.base(), t.token("eve"))
        .rollback("dev/app", 1, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        eve.contains("user:eve may not roll back states in dev"),
        "{eve}"
    );
    assert_status(
        &t.as_("alice").lock("dev/app").id("A1").send().await,
        StatusCode::OK,
    );
    let locked = Client::new(&t.base(), t.token("bob"))
        .rollback("dev/app", 1, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        locked.contains("held by user:alice") && locked.contains("423"),
        "{locked}"
    );
    assert_eq!(t.versions("dev", "app").await.len(), 2);
    let refusals: Vec<_> = t
        .audit(Some("dev"))
        .await
        .into_iter()
        .filter(|r| r.action == "state:rollback")
        .collect();
    assert_eq!(refusals.len(), 2);
    assert!(refusals
        .iter()
        .all(|r| r.decision == bulkhead::audit::Outcome::Deny));
}

#[tokio::test]
async fn rollback_in_a_protected_environment_needs_an_approved_change() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let id = p.approved("network").await;
    p.ci_apply(&id, &main, "L1", state_doc(1, "P", "")).await;
    let second = p.approved("network").await;
    p.ci_apply(&second, &main, "L2", state_doc(2, "P", r#","x":1"#))
        .await;

    let ci = Client::new(&p.t.base(), &main);
    let refused = ci
        .rollback("prod/network", 1, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("no change request named"), "{refused}");
    assert_eq!(p.t.versions("prod", "network").await.len(), 2);
    let rollback_change = p.approved("network").await;
    let done = ci
        .rollback("prod/network", 1, Some(&rollback_change))
        .await
        .unwrap();
    assert_eq!(done["version"], 3);
    let change = ci.change(&rollback_change).await.unwrap();
    assert_eq!(
        (change.readiness.as_str(), change.applied_version),
        ("applied", Some(3))
    );
    let history = ci.history("prod/network").await.unwrap();
    assert_eq!(history[2].change.as_deref(), Some(rollback_change.as_str()));
}

#[tokio::test]
async fn status_shows_owners_states_locks_changes_and_breakglass() {
    let p = spawn_protected("24h").await;
    let pending = p.propose("alice", "prod", "network").await;
    p.client("pat")
        .open_breakglass("prod", "db down", Some("1h"))
        .await
        .unwrap();
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("BG").send().await,
        StatusCode::OK,
    );
    assert_status(
        &p.t.as_("pat")
            .post("prod/network", state_doc(1, "P", ""))
            .lock_id("BG")
            .send()
            .await,
        StatusCode::OK,
    );
    // The server runs on this test's runtime: the client must not block it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("status")
        .env("BULKHEAD_ADDR", p.t.base())
        .env("BULKHEAD_TOKEN", p.t.token("bob"))
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("prod (owner team:platform, protected)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("changes waiting for approval: {pending}")),
        "{text}"
    );
    assert!(
        text.contains("!! BREAK-GLASS prod-bg1 open for user:pat"),
        "{text}"
    );
    assert!(text.contains("LOCKED by user:pat since"), "{text}");
    assert!(text.contains("network                  v1"), "{text}");
}
