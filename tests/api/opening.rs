//! Environment databases are opened by their first request and closed when nobody uses them:
//! what the server holds grows with the environments in use, not with those it knows. A
//! closed database's chain is checkpointed as it closes, and the next request opens it again
//! with nothing lost; nobody who may not read an environment can make the server open or
//! create its database.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

/// The `why` of each checkpoint written of `chain` so far.
fn checkpoints(t: &TestApp, chain: &str) -> Vec<String> {
    let file = t
        .dir
        .path()
        .join(format!("data/checkpoints/{chain}.checkpoints"));
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|c| c["why"].as_str().map(str::to_string))
        .collect()
}

/// Waits (bounded) until `chain` has a checkpoint that says `why`.
async fn checkpointed(t: &TestApp, chain: &str, why: &str) -> Vec<String> {
    for _ in 0..200 {
        let written = checkpoints(t, chain);
        if written.iter().any(|w| w == why) {
            return written;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "no `{why}` checkpoint of {chain}: {:?}",
        checkpoints(t, chain)
    );
}

#[tokio::test]
async fn an_idle_environment_is_closed_checkpointed_and_opened_again_by_its_next_request() {
    let t = spawn_app().await;
    let doc = state_doc(1, "L", "");
    assert_status(
        &t.as_("alice").post("dev/app", doc.clone()).send().await,
        StatusCode::OK,
    );
    checkpointed(&t, "dev", "open").await;

    // Used a moment ago: not idle yet.
    assert!(t.app.close_idle().await.is_empty());
    t.clock
        .advance(bulkhead::config::IDLE_CLOSE + Duration::from_secs(1));
    assert_eq!(t.app.close_idle().await, ["dev"]);
    assert!(t.app.stores.environment("dev").is_none());
    let written = checkpointed(&t, "dev", "close").await;

    // The next request opens it again, and finds everything as it was.
    let read = t.as_("bob").get("dev/app").send().await;
    assert_status(&read, StatusCode::OK);
    assert_eq!(read.bytes().await.unwrap().to_vec(), doc);
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(2, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    for _ in 0..200 {
        if checkpoints(&t, "dev").len() > written.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        checkpoints(&t, "dev").last().map(String::as_str),
        Some("open")
    );
    assert_eq!(t.versions("dev", "app").await.len(), 2);
    // A new database is a copy of one migrated once: nothing of that is left beside it.
    let left: Vec<String> = std::fs::read_dir(t.dir.path().join("data/environments"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".migrating-") || name.ends_with(".new"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn an_environment_a_request_holds_is_not_closed() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let held = t.store("dev").await;
    t.clock.advance(bulkhead::config::IDLE_CLOSE * 2);
    assert!(t.app.close_idle().await.is_empty());
    drop(held);
    assert_eq!(t.app.close_idle().await, ["dev"]);
}

#[tokio::test]
async fn a_protected_environment_is_opened_at_start_and_stays_open() {
    let config = CONFIG.replace(
        "  write = [\"service:ci-prod\"]\n}",
        "  write = [\"service:ci-prod\"]\n  approval {\n    required = 1\n  }\n}",
    );
    assert_ne!(config, CONFIG);
    let t = spawn_app_with(&config).await;
    assert!(t.app.stores.environment("prod").is_some());
    assert!(t.app.stores.environment("dev").is_none());
    t.clock.advance(bulkhead::config::IDLE_CLOSE * 2);
    assert!(t.app.close_idle().await.is_empty());
    assert!(t.app.stores.environment("prod").is_some());
}

#[tokio::test]
async fn nobody_who_may_not_read_an_environment_makes_the_server_create_its_database() {
    let t = spawn_app().await;
    let file = t.dir.path().join("data/environments/staging.db");
    let before = t.audit(None).await.len();
    // eve may read nothing; a wrong token is nobody.
    let eve = t.as_("eve").get("staging/app").send().await;
    assert_status(&eve, StatusCode::FORBIDDEN);
    let nobody = t
        .client
        .get(t.url("staging/app"))
        .basic_auth("alice", Some("not-a-token"))
        .send()
        .await
        .unwrap();
    assert_status(&nobody, StatusCode::UNAUTHORIZED);
    assert!(
        !file.exists(),
        "a refused request created staging's database"
    );
    assert!(t.app.stores.environment("staging").is_none());
    // Both are recorded, in the server's chain, naming staging.
    let records = t.audit(None).await;
    assert_eq!(records.len(), before + 2);
    assert!(records[before..]
        .iter()
        .all(|r| r.environment.as_deref() == Some("staging")));
    // `status` lists staging without creating it.
    let status = t.status_as("pat").await;
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["environment"] == "staging"),
        "{status}"
    );
    assert!(!file.exists(), "status created staging's database");
    assert_audit_verifies(t.dir.path()).await;
}
