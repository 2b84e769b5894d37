//! Contents checked on read: a version whose stored bytes no longer match its SHA-256 is never
//! served as if whole, its damage is recorded, and intact versions still read.

use std::path::Path;

use bulkhead::client::{Client, ClientError};
use bulkhead::store::environment::CHUNK_SIZE;
use reqwest::StatusCode;

use crate::helpers::*;

/// Lifts the append-only guard of the stored content, as someone with direct access to the
/// database (or a failing disk) could get past it.
async fn allow_content_edits(dir: &Path, env: &str) {
    let sql = if on_postgres() {
        "ALTER TABLE content_chunks DISABLE TRIGGER content_chunks_append_only"
    } else {
        "DROP TRIGGER IF EXISTS content_chunks_no_update"
    };
    exec_sql(dir, env, sql).await;
}

/// Stores chunk `seq` of `content` (the content of `state`'s `version`) with one bit of its
/// byte `at` flipped: same length, different bytes.
async fn flip_byte(
    dir: &Path,
    env: &str,
    (state, version): (&str, i64),
    content: &[u8],
    seq: usize,
    at: usize,
) {
    let mut chunk = content[seq * CHUNK_SIZE..content.len().min((seq + 1) * CHUNK_SIZE)].to_vec();
    chunk[at] ^= 0x01;
    let hex = hex::encode(&chunk);
    let literal = if on_postgres() {
        format!("decode('{hex}', 'hex')")
    } else {
        format!("X'{hex}'")
    };
    exec_sql(
        dir,
        env,
        &format!(
            "UPDATE content_chunks SET data = {literal} \
             WHERE state = '{state}' AND version = {version} AND seq = {seq}"
        ),
    )
    .await;
}

/// A state of about `size` bytes.
fn state_of(serial: i64, size: usize) -> Vec<u8> {
    let padding = "x".repeat(size);
    state_doc(serial, "L", &format!(r#","check_results":"{padding}""#))
}

fn assert_damaged_sentence(error: ClientError, state: &str, version: i64) {
    match error {
        ClientError::Refused { status, message } => {
            assert_eq!(status, 500, "{message}");
            assert_eq!(
                message,
                format!(
                    "version {version} of {state} is damaged: its content does not match its sha256; restore it with `bulkhead state rollback` to an intact version"
                )
            );
        }
        other => panic!("expected the damage sentence, got {other}"),
    }
}

/// The `state:read` records of `state` in `env` that name damage.
async fn damage_records(t: &TestApp, env: &str, state: &str) -> Vec<bulkhead::audit::Record> {
    t.audit(Some(env))
        .await
        .into_iter()
        .filter(|r| r.action == "state:read" && r.state.as_deref() == Some(state))
        .filter(|r| r.decision == bulkhead::audit::Outcome::Error)
        .collect()
}

#[tokio::test]
async fn a_damaged_version_is_refused_whole_and_recorded_and_intact_ones_still_read() {
    let t = spawn_app().await;
    let dir = t.dir.path();
    let alice = Client::new(&t.base(), t.token("alice"));
    let (v1, v2) = (state_of(1, 10_000), state_of(2, 20_000));
    for body in [&v1, &v2] {
        assert_status(
            &t.as_("alice").post("dev/app", body.clone()).send().await,
            StatusCode::OK,
        );
    }
    let other = state_of(1, 100);
    assert_status(
        &t.as_("alice").post("dev/other", other.clone()).send().await,
        StatusCode::OK,
    );
    allow_content_edits(dir, "dev").await;
    flip_byte(dir, "dev", ("app", 2), &v2, 0, 15_000).await;

    let get = t.as_("alice").get("dev/app").send().await;
    assert_eq!(get.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = get.text().await.unwrap();
    assert!(
        text.starts_with("version 2 of app is damaged: its content does not match its sha256"),
        "{text}"
    );
    let recorded = damage_records(&t, "dev", "app").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        recorded[0].reason.as_deref(),
        Some("content damaged: version 2 of app does not match its sha256")
    );
    assert_eq!(recorded[0].version, Some(2));

    // A second read is refused too: the damaged bytes were never kept in memory.
    let again = t.as_("alice").get("dev/app").send().await;
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);

    assert_damaged_sentence(alice.version("dev/app", 2).await.unwrap_err(), "app", 2);
    assert_damaged_sentence(alice.diff("dev/app", 1, 2).await.unwrap_err(), "app", 2);
    assert_damaged_sentence(
        alice.rollback("dev/app", 2, None).await.unwrap_err(),
        "app",
        2,
    );
    // Refused rollbacks and reads store nothing.
    assert_eq!(t.versions("dev", "app").await.len(), 2);
    // The history still lists every version, so an intact one can be chosen.
    assert_eq!(alice.history("dev/app").await.unwrap().len(), 2);

    // Intact versions and states read as ever.
    assert_eq!(alice.version("dev/app", 1).await.unwrap(), v1);
    let get = t.as_("alice").get("dev/other").send().await;
    assert_status(&get, StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap(), other);

    // The way out the sentence names: a rollback to an intact version.
    alice.rollback("dev/app", 1, None).await.unwrap();
    let get = t.as_("alice").get("dev/app").send().await;
    assert_status(&get, StatusCode::OK);
    let restored: serde_json::Value = get.json().await.unwrap();
    assert_eq!(restored["serial"], 3);
    // The two GETs and the `?version=2`, and nothing since.
    assert_eq!(damage_records(&t, "dev", "app").await.len(), 3);
}

#[tokio::test]
async fn a_damaged_state_that_streams_is_cut_off_before_its_last_chunk() {
    let t = spawn_app().await;
    let dir = t.dir.path();
    let pat = Client::new(&t.base(), t.token("pat"));
    // Three chunks; the damage is in the middle one, found only at the end.
    let content = state_of(1, 2 * CHUNK_SIZE + 1000);
    assert_status(
        &t.as_("pat")
            .post("staging/big", content.clone())
            .send()
            .await,
        StatusCode::OK,
    );
    let intact = state_of(1, CHUNK_SIZE + 10);
    assert_status(
        &t.as_("pat")
            .post("staging/fine", intact.clone())
            .send()
            .await,
        StatusCode::OK,
    );
    allow_content_edits(dir, "staging").await;
    flip_byte(dir, "staging", ("big", 1), &content, 1, 7).await;

    let get = t.as_("pat").get("staging/big").send().await;
    // The answer began before the damage could be known; its body never arrives whole.
    assert_status(&get, StatusCode::OK);
    let declared = get.content_length();
    assert_eq!(declared, Some(content.len() as u64));
    match get.bytes().await {
        Err(_) => {}
        Ok(body) => panic!(
            "a damaged content arrived whole: {} of {} bytes, intact: {}",
            body.len(),
            content.len(),
            body == content
        ),
    }
    let recorded = damage_records(&t, "staging", "big").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(
        recorded[0].reason.as_deref(),
        Some("content damaged: version 1 of big does not match its sha256")
    );
    assert_eq!(recorded[0].version, Some(1));

    assert_damaged_sentence(pat.version("staging/big", 1).await.unwrap_err(), "big", 1);

    let get = t.as_("pat").get("staging/fine").send().await;
    assert_status(&get, StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap(), intact);
    assert!(damage_records(&t, "staging", "fine").await.is_empty());
}
