//! Personal environments: one per member of a template's teams, owned and written by that
//! member alone, read by whom the template names, and created by its first use.

use reqwest::StatusCode;

use crate::helpers::*;

/// [`CONFIG`] with a sandbox for each developer (alice, bob), read by the platform team.
pub fn sandbox_config() -> String {
    format!(
        "{CONFIG}\npersonal \"sandbox\" {{\n  members = [\"team:app\"]\n  read    = [\"team:platform\"]\n}}\n"
    )
}

#[tokio::test]
async fn a_member_writes_their_own_sandbox_another_is_refused_naming_the_owner_and_a_reader_reads()
{
    let t = spawn_app_with(&sandbox_config()).await;
    let doc = state_doc(1, "L", "");
    let mine = t
        .as_("alice")
        .post("sandbox-alice/app", doc.clone())
        .send()
        .await;
    assert_status(&mine, StatusCode::OK);
    let stored = t.stored("sandbox-alice", "app").await;
    assert_eq!(stored.as_deref(), Some(&doc[..]));

    let refused = t.as_("bob").lock("sandbox-alice/app").id("B1").send().await;
    assert_status(&refused, StatusCode::LOCKED);
    let info: serde_json::Value = refused.json().await.unwrap();
    let said = info["ID"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("user:bob may not write sandbox-alice (owner: user:alice): it is user:alice's personal environment, written by user:alice alone; yours, if `personal \"sandbox\"` gives you one, is sandbox-bob"),
        "{info}"
    );
    for who in ["bob", "pat", "eve"] {
        let write = t
            .as_(who)
            .post("sandbox-alice/app", state_doc(2, "L", ""))
            .send()
            .await;
        assert_status(&write, StatusCode::FORBIDDEN);
    }
    assert_eq!(t.stored("sandbox-alice", "app").await, stored);
    assert_eq!(t.versions("sandbox-alice", "app").await.len(), 1);

    let read = t.as_("pat").get("sandbox-alice/app").send().await;
    assert_status(&read, StatusCode::OK);
    assert_eq!(read.bytes().await.unwrap(), doc);
    for who in ["bob", "eve"] {
        let read = t.as_(who).get("sandbox-alice/app").send().await;
        assert_status(&read, StatusCode::FORBIDDEN);
    }
    let denied = t
        .newest_audit("sandbox-alice", |r| {
            r.decision == bulkhead::audit::Outcome::Deny
                && r.principal.as_deref() == Some("user:bob")
        })
        .await;
    assert_eq!(denied.action, "state:read");
}

#[tokio::test]
async fn a_sandbox_is_created_by_its_first_use_checkpointed_and_verified() {
    let t = spawn_app_with(&sandbox_config()).await;
    assert!(t.app.stores.environment("sandbox-bob").is_none());
    let file = t.dir.path().join("data/environments/sandbox-bob.db");
    if !on_postgres() {
        assert!(!file.exists());
    }
    // Looking at the status lists it, and creates nothing.
    let status = t
        .client
        .get(format!("{}/v1/status", t.base()))
        .bearer_auth(t.token("pat"))
        .send()
        .await
        .unwrap();
    assert_status(&status, StatusCode::OK);
    let status: serde_json::Value = status.json().await.unwrap();
    let listed = status
        .as_array()
        .and_then(|envs| envs.iter().find(|e| e["environment"] == "sandbox-bob"))
        .unwrap_or_else(|| panic!("sandbox-bob is listed: {status}"));
    assert_eq!(listed["owner"], "user:bob", "{listed}");
    assert!(t.app.stores.environment("sandbox-bob").is_none());

    // Many first requests at once open it once.
    let first: Vec<_> = (0..8)
        .map(|_| t.as_("bob").get("sandbox-bob/app").send())
        .collect();
    for answer in futures_util::future::join_all(first).await {
        assert_status(&answer, StatusCode::NO_CONTENT);
    }
    let write = t
        .as_("bob")
        .post("sandbox-bob/app", state_doc(1, "L", ""))
        .send()
        .await;
    assert_status(&write, StatusCode::OK);
    if !on_postgres() {
        assert!(file.exists());
    }
    let checkpoints = t
        .dir
        .path()
        .join("data/checkpoints/sandbox-bob.checkpoints");
    let opened = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let text = std::fs::read_to_string(&checkpoints).unwrap_or_default();
            if text.contains("\"why\":\"open\"") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let text = opened.expect("the opening of sandbox-bob is checkpointed");
    assert_eq!(text.matches("\"why\":\"open\"").count(), 1, "{text}");
    // Never used, alice's has nothing to verify; bob's verifies with its checkpoints.
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn an_environment_no_template_makes_is_not_found_and_the_answer_names_the_templates() {
    let t = spawn_app_with(&sandbox_config()).await;
    for who in ["alice", "eve"] {
        let answer = t.as_(who).get("sandbox-carol/app").send().await;
        assert_status(&answer, StatusCode::NOT_FOUND);
        let said = answer.text().await.unwrap();
        assert!(
            said.contains("there is no environment `sandbox-carol`: known environments are dev, staging, prod, and a personal one for each member of `sandbox-<member>`"),
            "{said}"
        );
    }
    assert!(t.app.stores.environment("sandbox-carol").is_none());
}

#[tokio::test]
async fn someone_who_may_not_read_a_sandbox_nobody_used_is_refused_and_it_is_not_created() {
    let t = spawn_app_with(&sandbox_config()).await;
    for who in ["eve", "alice"] {
        let read = t.as_(who).get("sandbox-bob/app").send().await;
        assert_status(&read, StatusCode::FORBIDDEN);
        let said = read.text().await.unwrap();
        assert!(
            said.contains(&format!(
                "user:{who} may not read sandbox-bob (owner: user:bob)"
            )),
            "{said}"
        );
        let write = t
            .as_(who)
            .post("sandbox-bob/app", state_doc(1, "L", ""))
            .send()
            .await;
        assert_status(&write, StatusCode::FORBIDDEN);
    }
    assert!(t.app.stores.environment("sandbox-bob").is_none());
    if !on_postgres() {
        assert!(!t
            .dir
            .path()
            .join("data/environments/sandbox-bob.db")
            .exists());
    }
    // The refusals are recorded, in the server's chain while the sandbox has none.
    let refused = t
        .audit(None)
        .await
        .into_iter()
        .filter(|r| {
            r.environment.as_deref() == Some("sandbox-bob")
                && r.decision == bulkhead::audit::Outcome::Deny
        })
        .count();
    assert_eq!(refused, 4);
}

#[tokio::test]
async fn a_member_who_left_loses_their_sandbox_and_its_readers_still_read_it() {
    let t = spawn_app_with(&sandbox_config()).await;
    let doc = state_doc(1, "L", "");
    let write = t
        .as_("bob")
        .post("sandbox-bob/app", doc.clone())
        .send()
        .await;
    assert_status(&write, StatusCode::OK);
    // bob leaves the team; the server starts again on the new config.
    let file = t.dir.path().join("bulkhead.hcl");
    let before = std::fs::read_to_string(&file).unwrap();
    let config = before.replace(
        "team \"app\"      { members = [\"alice\", \"bob\"] }",
        "team \"app\"      { members = [\"alice\"] }\nuser \"bob\" {}",
    );
    assert_ne!(config, before);
    std::fs::write(&file, config).unwrap();
    let s = t.serve_process().await;
    let read = t.as_("pat").on(&s.base).get("sandbox-bob/app").send().await;
    assert_status(&read, StatusCode::OK);
    assert_eq!(read.bytes().await.unwrap(), doc);
    let lock = t
        .as_("bob")
        .on(&s.base)
        .lock("sandbox-bob/app")
        .id("B2")
        .send()
        .await;
    assert_status(&lock, StatusCode::LOCKED);
    let info: serde_json::Value = lock.json().await.unwrap();
    assert!(
        info["ID"].as_str().unwrap_or_default().contains("it was user:bob's personal environment, and they are no longer a member of `personal \"sandbox\"`: nobody writes it"),
        "{info}"
    );
    let post = t
        .as_("bob")
        .on(&s.base)
        .post("sandbox-bob/app", state_doc(2, "L", ""))
        .send()
        .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    assert_eq!(t.stored("sandbox-bob", "app").await, Some(doc));
    if !on_postgres() {
        assert!(t
            .dir
            .path()
            .join("data/environments/sandbox-bob.db")
            .exists());
    }
    assert_audit_verifies(t.dir.path()).await;
}
