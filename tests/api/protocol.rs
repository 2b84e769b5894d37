//! The state protocol over real HTTP: authentication, authorization, locks and write rules,
//! refusals as much as the happy path. Every refusal leaves the stored state unchanged.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn health_answers() {
    let t = spawn_app().await;
    let r = t
        .client
        .get(format!("{}/healthz", t.base()))
        .send()
        .await
        .unwrap();
    assert_status(&r, StatusCode::OK);
    assert!(r.text().await.unwrap().contains("ok"));
}

#[tokio::test]
async fn missing_wrong_and_misattributed_credentials_are_401_and_recorded() {
    let t = spawn_app().await;
    let r = t.anonymous().get("dev/app").send().await;
    assert_status(&r, StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));

    let wrong = t
        .client
        .get(t.url("dev/app"))
        .basic_auth(
            "alice",
            Some("bh_0000000000000000_".to_string() + &"0".repeat(64)),
        )
        .send()
        .await
        .unwrap();
    assert_status(&wrong, StatusCode::UNAUTHORIZED);

    // bob's token presented under alice's name.
    let misattributed = t
        .client
        .get(t.url("dev/app"))
        .basic_auth("alice", Some(t.token("bob")))
        .send()
        .await
        .unwrap();
    assert_status(&misattributed, StatusCode::UNAUTHORIZED);

    // Bearer works without a name.
    let bearer = t
        .client
        .get(t.url("dev/app"))
        .bearer_auth(t.token("alice"))
        .send()
        .await
        .unwrap();
    assert_status(&bearer, StatusCode::NO_CONTENT);

    let records = t.audit(Some("dev")).await;
    let denied: Vec<_> = records.iter().filter(|r| r.status == Some(401)).collect();
    assert_eq!(denied.len(), 3);
    assert!(denied
        .iter()
        .all(|r| r.decision == bulkhead::audit::Outcome::Deny));
}

#[tokio::test]
async fn a_revoked_token_no_longer_works() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice").get("dev/app").send().await,
        StatusCode::NO_CONTENT,
    );
    let id = &t.token("alice")[3..19];
    let revoked = t
        .app
        .stores
        .system
        .revoke_token(id, &bulkhead::audit::Record::new("token:revoke"))
        .await
        .unwrap();
    assert!(revoked);
    assert_status(
        &t.as_("alice").get("dev/app").send().await,
        StatusCode::UNAUTHORIZED,
    );
}

/// Revokes a token as another process does (`bulkhead token revoke`): behind the server's back.
async fn revoke_elsewhere(t: &TestApp, who: &str) {
    let id = &t.token(who)[3..19];
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["token", "revoke", id, "--config", "bulkhead.hcl"])
        .current_dir(t.dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn with_no_token_cache_a_token_revoked_elsewhere_fails_at_once() {
    let t = spawn_app_with(&config_with_server("token_cache = \"0s\"")).await;
    let get = || t.as_("alice").get("dev/app").send();
    assert_status(&get().await, StatusCode::NO_CONTENT);
    revoke_elsewhere(&t, "alice").await;
    assert_status(&get().await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_revoked_elsewhere_fails_once_the_token_cache_time_is_over() {
    let t = spawn_app_with(&config_with_server("token_cache = \"1h\"")).await;
    let get = || t.as_("alice").get("dev/app").send();
    assert_status(&get().await, StatusCode::NO_CONTENT);
    revoke_elsewhere(&t, "alice").await;
    // Within the hour, the row read before is trusted: no database round trip per request.
    assert_status(&get().await, StatusCode::NO_CONTENT);
    t.clock.advance(std::time::Duration::from_secs(3601));
    assert_status(&get().await, StatusCode::UNAUTHORIZED);
    // Other tokens were not affected.
    assert_status(
        &t.as_("bob").get("dev/app").send().await,
        StatusCode::NO_CONTENT,
    );
}

#[tokio::test]
async fn unknown_environment_is_404_and_recorded_in_the_server_chain() {
    let t = spawn_app().await;
    let r = t.as_("alice").get("qa/app").send().await;
    assert_status(&r, StatusCode::NOT_FOUND);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("known environments are dev, staging, prod"));
    let last = t.audit(None).await.pop().unwrap();
    assert_eq!(
        (last.environment.as_deref(), last.status),
        (Some("qa"), Some(404))
    );
}

#[tokio::test]
async fn bad_state_names_are_400() {
    let t = spawn_app().await;
    for path in ["dev/a%20b", "dev/", "dev"] {
        let r = t.as_("alice").get(path).send().await;
        assert_status(&r, StatusCode::BAD_REQUEST);
    }
    // Raw bytes, so that no client library normalises the path first.
    for path in [
        "/v1/state/dev/a/../b",
        "/v1/state/dev/a/%2e%2e/b",
        "/v1/state/dev/a//b",
        "/v1/state/dev/..",
    ] {
        let status = raw_get(&t, path).await;
        assert_eq!(status, 400, "{path}");
    }
}

async fn raw_get(t: &TestApp, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let auth = base64_basic("alice", t.token("alice"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn base64_basic(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

#[tokio::test]
async fn no_state_yet_is_204_and_a_state_the_caller_may_not_read_is_403_not_404() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("eve").get("prod/net").send().await,
        StatusCode::FORBIDDEN,
    );
    assert_status(
        &t.as_("ci-prod").lock("prod/net").id("L1").send().await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("ci-prod")
            .post("prod/net", state_doc(1, "P", ""))
            .lock_id("L1")
            .send()
            .await,
        StatusCode::OK,
    );
    let r = t.as_("eve").get("prod/net").send().await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("user:eve may not read prod (owner: team:platform)"),
        "{body}"
    );
    let r = t.as_("alice").get("prod/net").send().await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().to_vec(), state_doc(1, "P", ""));
}

#[tokio::test]
async fn refused_lock_answers_423_with_the_sentence_as_id_and_stores_nothing() {
    let t = spawn_app().await;
    let r = t.as_("alice").lock("prod/net").id("A1").send().await;
    assert_status(&r, StatusCode::LOCKED);
    let info: serde_json::Value = r.json().await.unwrap();
    let id = info["ID"].as_str().unwrap();
    assert!(
        id.starts_with("user:alice may not write prod (owner: team:platform): prod changes are applied by service:ci-prod"),
        "{id}"
    );
    assert!(t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("net")
        .await
        .unwrap()
        .is_none());
    let last = t.last_audit("prod").await;
    assert_eq!(
        (last.action.as_str(), last.status),
        ("state:lock", Some(423))
    );
    assert_eq!(
        last.policy.as_deref(),
        Some("default deny (no policy permits it)")
    );
    assert!(last.reason.unwrap().contains("may not write prod"));
}

#[tokio::test]
async fn second_locker_is_refused_with_the_authenticated_holder() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("A1").send().await,
        StatusCode::OK,
    );
    // The same lock again (a client retry) is granted again.
    assert_status(
        &t.as_("alice").lock("dev/app").id("A1").send().await,
        StatusCode::OK,
    );
    let r = t.as_("bob").lock("dev/app").id("B1").send().await;
    assert_status(&r, StatusCode::LOCKED);
    let holder: serde_json::Value = r.json().await.unwrap();
    assert!(
        holder["ID"]
            .as_str()
            .unwrap()
            .starts_with("A1 held by user:alice"),
        "{holder}"
    );
    assert_eq!(holder["Who"], "user:alice (client said: dev@laptop)");
    // bob may not write under alice's lock, nor without one.
    assert_status(
        &t.as_("bob")
            .post("dev/app", state_doc(1, "L", ""))
            .lock_id("A1")
            .send()
            .await,
        StatusCode::LOCKED,
    );
    assert_status(
        &t.as_("bob")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::LOCKED,
    );
    // Nor may anyone but the holder release it without force-unlock (eve has no such right).
    assert_status(
        &t.as_("eve").unlock("dev/app").id("A1").send().await,
        StatusCode::FORBIDDEN,
    );
    assert!(t.versions("dev", "app").await.is_empty());
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .lock_id("A1")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice").unlock("dev/app").id("A1").send().await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("bob").lock("dev/app").id("B1").send().await,
        StatusCode::OK,
    );
}

#[tokio::test]
async fn readers_plan_lock_blocks_no_writer_and_nothing_is_written_under_it() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .lock("prod/net")
            .id("PLAN1")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("ci-prod").lock("prod/net").id("CI1").send().await,
        StatusCode::OK,
    );
    let r = t
        .as_("alice")
        .post("prod/net", state_doc(1, "P", ""))
        .lock_id("PLAN1")
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert!(t.versions("prod", "net").await.is_empty());
    assert_status(
        &t.as_("alice")
            .unlock("prod/net")
            .id("PLAN1")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    // The writer's lock is untouched.
    let held = t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("net")
        .await
        .unwrap();
    assert_eq!(held.unwrap().lock_id, "CI1");
}

#[tokio::test]
async fn write_rules_refuse_with_reasons_and_leave_the_state_unchanged() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(5, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "not a JSON object",
        ),
        (
            br#"{"lineage":"L"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "serial",
        ),
        (
            state_doc(6, "OTHER", ""),
            StatusCode::CONFLICT,
            "lineage OTHER differs",
        ),
        (
            state_doc(4, "L", ""),
            StatusCode::CONFLICT,
            "serial 4 is older",
        ),
        (
            state_doc(5, "L", r#","check_results":null"#),
            StatusCode::CONFLICT,
            "already stored",
        ),
        (
            state_doc(6, "L", &format!(r#","pad":"{}""#, "x".repeat(70_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
    ];
    for (body, status, reason) in cases {
        let r = t.as_("alice").post("dev/app", body).send().await;
        assert_status(&r, status);
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{text}");
        let last = t.last_audit("dev").await;
        assert!(last.reason.unwrap().contains(reason));
        assert_eq!(t.versions("dev", "app").await.len(), 1);
        assert_eq!(t.stored("dev", "app").await.unwrap(), state_doc(5, "L", ""));
    }
    // A retried POST of the very bytes is accepted and stores nothing new.
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(5, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_eq!(t.versions("dev", "app").await.len(), 1);
    let next = t
        .as_("bob")
        .post("dev/app", state_doc(6, "L", ""))
        .send()
        .await;
    assert_status(&next, StatusCode::OK);
    let versions = t.versions("dev", "app").await;
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.principal.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "user:alice"), (2, "user:bob")]
    );
}

#[tokio::test]
async fn force_write_needs_the_right_and_is_recorded_as_forced() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(5, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "NEW", ""))
            .send()
            .await,
        StatusCode::CONFLICT,
    );
    let r = t
        .as_("pat")
        .post("dev/app", state_doc(1, "NEW", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::OK);
    let versions = t.versions("dev", "app").await;
    assert_eq!(versions.len(), 2);
    assert!(versions[1].forced && versions[1].lineage.as_deref() == Some("NEW"));
    let last = t.last_audit("dev").await;
    assert!(last.forced);
    assert!(last.policy.unwrap().contains("dev.force_write.user:pat"));
}

#[tokio::test]
async fn force_unlock_needs_the_right() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("ci-prod").lock("prod/net").id("CI1").send().await,
        StatusCode::OK,
    );
    // terraform force-unlock: an empty body. alice is no owner of prod.
    let r = t
        .as_("alice")
        .request("UNLOCK", "prod/net")
        .body(Vec::new())
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("user:alice may not force-unlock prod"));
    assert!(t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("net")
        .await
        .unwrap()
        .is_some());
    assert_eq!(t.last_audit("prod").await.action, "state:force-unlock");
    // OpenTofu's form, {"ID": ...}, by the owner.
    let r = t
        .as_("pat")
        .request("UNLOCK", "prod/net")
        .body(br#"{"ID":"CI1"}"#.to_vec())
        .send()
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("net")
        .await
        .unwrap()
        .is_none());
    let last = t.last_audit("prod").await;
    assert_eq!(
        last.reason.as_deref(),
        Some("force-unlocked the lock of service:ci-prod")
    );
}

#[tokio::test]
async fn opentofu_encrypted_states_are_stored_byte_for_byte() {
    let t = spawn_app().await;
    let doc = br#"{"serial":1,"lineage":"E","meta":{"key_provider.pbkdf2.k":"eyJ9"},"encrypted_data":"c2VjcmV0","encryption_version":"v0"}"#;
    assert_status(
        &t.as_("alice").post("dev/enc", doc.to_vec()).send().await,
        StatusCode::OK,
    );
    let got = t
        .as_("alice")
        .get("dev/enc")
        .send()
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), doc.as_slice());
    let older = br#"{"serial":0,"lineage":"E","meta":{},"encrypted_data":"eA==","encryption_version":"v0"}"#;
    assert_status(
        &t.as_("alice").post("dev/enc", older.to_vec()).send().await,
        StatusCode::CONFLICT,
    );
}

#[tokio::test]
async fn deletion_is_a_version_and_needs_the_right() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("pat").delete("dev/app").send().await,
        StatusCode::FORBIDDEN,
    );
    assert_status(&t.as_("bob").delete("dev/app").send().await, StatusCode::OK);
    assert_status(
        &t.as_("alice").get("dev/app").send().await,
        StatusCode::NO_CONTENT,
    );
    let versions = t.versions("dev", "app").await;
    assert_eq!(versions.len(), 2);
    assert!(versions[1].deleted);
    // A new lineage may start after a deletion.
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(0, "FRESH", ""))
            .send()
            .await,
        StatusCode::OK,
    );
}

#[tokio::test]
async fn unknown_methods_are_405() {
    let t = spawn_app().await;
    let r = t.as_("alice").request("PATCH", "dev/app").send().await;
    assert_status(&r, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn when_the_audit_record_cannot_be_written_the_request_is_refused() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    // Break the dev chain from outside, as a full disk or a broken file would.
    break_audit_writes(t.dir.path(), "dev").await;
    let r = t
        .as_("alice")
        .post("dev/app", state_doc(2, "L", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(t.versions("dev", "app").await.len(), 1);
    let r = t.as_("alice").get("dev/app").send().await;
    assert_status(&r, StatusCode::SERVICE_UNAVAILABLE);
    let r = t.as_("alice").lock("dev/app").id("X").send().await;
    assert_status(&r, StatusCode::SERVICE_UNAVAILABLE);
    assert!(t
        .app
        .stores
        .environment("dev")
        .unwrap()
        .held_lock("app")
        .await
        .unwrap()
        .is_none());
    // Each refusal counts as a failed append, the write's inside its effect's transaction too.
    let text = t.app.metrics.render().unwrap();
    let failures: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("bulkhead_audit_append_failures_total "))
        .and_then(|n| n.parse().ok())
        .expect("the failures counter");
    assert_eq!(failures, 3.0, "{text}");
}

#[tokio::test]
async fn serves_tls_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let config = CONFIG.replace(
        "data_dir = \"data\"",
        &format!(
            "data_dir = \"data\"\n  tls {{\n    cert_file = \"{}\"\n    key_file = \"{}\"\n  }}",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display()
        ),
    );
    let t = spawn_app_with(&config).await;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", t.addr)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/state/dev/app", t.addr.port());
    let r = client
        .get(&url)
        .basic_auth("alice", Some(t.token("alice")))
        .send()
        .await
        .unwrap();
    assert_status(&r, StatusCode::NO_CONTENT);
    // Under TLS the dashboard's session cookie is only ever sent back over TLS.
    let signed = client
        .post(format!("https://localhost:{}/ui/login", t.addr.port()))
        .form(&[("token", t.token("alice"))])
        .send()
        .await
        .unwrap();
    let cookie = signed.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // Plain HTTP on the TLS port gets no answer it could mistake for a state.
    let plain = t
        .client
        .get(t.url("dev/app"))
        .basic_auth("alice", Some(t.token("alice")))
        .send()
        .await;
    assert!(plain
        .map(|r| r.status() != StatusCode::NO_CONTENT)
        .unwrap_or(true));
}

#[tokio::test]
async fn a_body_damaged_in_transit_is_refused() {
    let t = spawn_app().await;
    let r = t
        .client
        .post(t.url("dev/app"))
        .basic_auth("alice", Some(t.token("alice")))
        .header("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")
        .body(state_doc(1, "L", ""))
        .send()
        .await
        .unwrap();
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert!(t.versions("dev", "app").await.is_empty());
}

#[tokio::test]
async fn a_large_state_round_trips_in_chunks_with_its_length() {
    let t = spawn_app().await;
    // Over two storage chunks, with a multi-byte character across a chunk boundary.
    let pad = "é".repeat(1_300_000);
    let doc = state_doc(1, "L", &format!(",\"pad\":\"{pad}\""));
    assert!(doc.len() > 2 * (1 << 20));
    assert_status(
        &t.as_("pat").post("staging/big", doc.clone()).send().await,
        StatusCode::OK,
    );
    let r = t.as_("alice").get("staging/big").send().await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.content_length(), Some(doc.len() as u64));
    assert_eq!(r.bytes().await.unwrap().as_ref(), &doc[..]);
    let versions = t.versions("staging", "big").await;
    assert_eq!(versions[0].size, doc.len() as i64);
    assert_eq!(t.stored("staging", "big").await, Some(doc));
    // A small version after it reads back whole, nothing of the big one mixed in.
    let small = state_doc(2, "L", "");
    assert_status(
        &t.as_("pat").post("staging/big", small.clone()).send().await,
        StatusCode::OK,
    );
    let r = t.as_("alice").get("staging/big").send().await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), &small[..]);
}

#[tokio::test]
async fn with_audit_sync_all_reads_and_refusals_are_recorded_alike() {
    let t = spawn_app_with(&config_with_server("audit_sync = \"all\"")).await;
    assert_status(
        &t.as_("alice").get("dev/app").send().await,
        StatusCode::NO_CONTENT,
    );
    assert_status(
        &t.anonymous().get("dev/app").send().await,
        StatusCode::UNAUTHORIZED,
    );
    let statuses: Vec<_> = t
        .audit(Some("dev"))
        .await
        .iter()
        .filter(|r| r.action == "state:read")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [Some(204), Some(401)]);
}

/// A LOCK as a client of `version` sends it.
fn lock_from(version: &str, id: &str) -> Vec<u8> {
    let mut info: serde_json::Value =
        serde_json::from_str(&lock_info(id, "OperationTypeApply")).unwrap();
    info["Version"] = version.into();
    info.to_string().into_bytes()
}

#[tokio::test]
async fn a_refused_lock_is_answered_in_the_form_that_ends_each_clients_retries_where_it_can() {
    let t = spawn_app().await;
    let sentence = "user:alice may not write prod (owner: team:platform)";
    // terraform 1.15 and later: an empty ID, which ends its retries; the sentence in Info.
    // Earlier terraform, and OpenTofu (whose releases share those numbers): the sentence as
    // the ID, all they print.
    for (version, empty_id) in [
        ("1.15.5", true),
        ("1.16.0", true),
        ("1.14.9", false),
        ("1.11.4", false),
        ("1.9.0", false),
        ("", false),
    ] {
        let resp = t
            .as_("alice")
            .request("LOCK", "prod/network")
            .body(lock_from(version, "L1"))
            .send()
            .await;
        assert_status(&resp, StatusCode::LOCKED);
        let info: serde_json::Value = resp.json().await.unwrap();
        let id = info["ID"].as_str().unwrap();
        assert_eq!(id.is_empty(), empty_id, "{version}: {info}");
        if !empty_id {
            assert!(id.starts_with(sentence), "{version}: {info}");
        }
        assert!(
            info["Info"].as_str().unwrap().starts_with(sentence),
            "{version}: {info}"
        );
        // Every record keeps the sentence, whatever the client was answered.
        let record = t.last_audit("prod").await;
        assert!(
            record
                .reason
                .as_deref()
                .unwrap_or_default()
                .starts_with(sentence),
            "{record:?}"
        );
    }
    assert!(t
        .store("prod")
        .await
        .held_lock("network")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_held_lock_is_answered_with_a_lock_info_opentofu_and_terraform_parse() {
    let t = spawn_app().await;
    let taken = t.as_("alice").lock("dev/app").id("first").send().await;
    assert_status(&taken, StatusCode::OK);
    // A holder is someone who will let go: the ID stays, so every client keeps retrying.
    let resp = t
        .as_("bob")
        .request("LOCK", "dev/app")
        .body(lock_from("1.15.5", "second"))
        .send()
        .await;
    assert_status(&resp, StatusCode::LOCKED);
    let info: serde_json::Value = resp.json().await.unwrap();
    for key in ["ID", "Operation", "Info", "Who", "Version", "Path"] {
        assert!(info[key].is_string(), "{key}: {info}");
    }
    assert!(
        info["ID"]
            .as_str()
            .unwrap()
            .contains("first held by user:alice"),
        "{info}"
    );
    // Go parses Created as RFC 3339 (an empty one fails the whole answer).
    let created = info["Created"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(created).is_ok(),
        "{info}"
    );
}
