//! Protected environments: change requests, four-eyes approval, the pipeline's OIDC identity
//! and branch, break-glass. Every refusal names the missing step, is recorded, and leaves the
//! stored state unchanged.

use std::time::Duration;

use base64::Engine;
use bulkhead::client::{Client, NewChange};
use reqwest::StatusCode;

use crate::helpers::*;

/// A CI provider of our own: an ES256 key, its JWKS, and tokens it signs.
pub struct Issuer {
    pub dir: tempfile::TempDir,
    key_pem: String,
}

pub const ISSUER: &str = "https://ci.example";

impl Issuer {
    pub fn new() -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }]});
        std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
        Issuer {
            dir,
            key_pem: key.serialize_pem(),
        }
    }

    pub fn jwks_path(&self) -> String {
        self.dir.path().join("jwks.json").display().to_string()
    }

    /// A token with GitHub-like claims for `branch`, with `edit` applied to the claims.
    pub fn token(&self, branch: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": "bulkhead", "sub": "repo:acme/infra:ref:refs/heads/main",
            "repository": "acme/infra", "ref": format!("refs/heads/{branch}"),
            "iat": now, "exp": now + 600,
        });
        edit(&mut claims);
        sign(&self.key_pem, &claims)
    }
}

fn sign(pem: &str, claims: &serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

pub fn protected_config(jwks: &str, expires: &str) -> String {
    format!(
        r#"
server {{
  data_dir = "data"
}}
team "platform" {{ members = ["pat", "quinn"] }}
team "app"      {{ members = ["alice", "bob"] }}
service "ci-prod" {{
  oidc {{
    issuer    = "{ISSUER}"
    audience  = "bulkhead"
    jwks_file = "{jwks}"
    claims    = {{ repository = "acme/infra" }}
  }}
}}
environment "staging" {{
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
  approval {{ required = 1 }}
}}
environment "prod" {{
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
  approval {{
    required  = 1
    approvers = ["team:platform"]
    expires   = "{expires}"
  }}
  pipeline {{ branches = ["main"] }}
  breakglass {{
    allowed = ["user:pat"]
    max_ttl = "2h"
  }}
}}
"#
    )
}

pub const PLAN: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
  "resource_changes":[{"address":"terraform_data.a","change":{"actions":["create"]}},
                      {"address":"terraform_data.old","change":{"actions":["delete"]}}]}"#;

pub struct Protected {
    pub t: TestApp,
    pub issuer: Issuer,
}

pub async fn spawn_protected(expires: &str) -> Protected {
    let issuer = Issuer::new();
    let t = spawn_app_with(&protected_config(&issuer.jwks_path(), expires)).await;
    Protected { t, issuer }
}

impl Protected {
    pub fn client(&self, who: &str) -> Client {
        Client::new(&self.t.base(), self.t.token(who))
    }

    pub async fn propose(&self, who: &str, env: &str, state: &str) -> String {
        let new = NewChange {
            environment: env,
            state,
            title: Some("add a"),
            branch: Some("main"),
            commit: None,
        };
        self.client(who)
            .create_change(&new, PLAN.as_bytes().to_vec())
            .await
            .unwrap()
            .id
    }

    pub async fn approved(&self, state: &str) -> String {
        let id = self.propose("alice", "prod", state).await;
        self.client("pat")
            .decide(&id, "approve", None)
            .await
            .unwrap();
        id
    }

    /// State requests from the prod pipeline, with `jwt` (its OIDC token) as the Basic
    /// password.
    pub fn pipeline(&self, jwt: &str) -> Requester<'_> {
        self.t.as_("ci-prod").with_secret(jwt)
    }

    /// The pipeline's apply of `change`: lock, write `state`, unlock, each answered 200.
    pub async fn ci_apply(&self, change: &str, jwt: &str, lock_id: &str, state: Vec<u8>) {
        let path = format!("prod/network?change={change}");
        let lock = self.pipeline(jwt).lock(&path).id(lock_id).send().await;
        assert_status(&lock, StatusCode::OK);
        let post = self
            .pipeline(jwt)
            .post(&path, state)
            .lock_id(lock_id)
            .send();
        assert_status(&post.await, StatusCode::OK);
        let unlock = self.pipeline(jwt).unlock(&path).id(lock_id).send().await;
        assert_status(&unlock, StatusCode::OK);
    }
}

/// The ID of a refused LOCK: the sentence terraform shows.
pub async fn refusal(resp: reqwest::Response) -> String {
    assert_status(&resp, StatusCode::LOCKED);
    let info: serde_json::Value = resp.json().await.unwrap();
    info["ID"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_full_road_applies_once() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let id = p.propose("alice", "prod", "network").await;
    assert_eq!(id, "prod-1");
    let shown = p.client("bob").change(&id).await.unwrap();
    assert_eq!(
        (shown.readiness.as_str(), shown.summary.counts()),
        ("pending", (1, 0, 1))
    );
    let approved = p.client("pat").decide(&id, "approve", None).await.unwrap();
    assert_eq!(approved.readiness, "approved");

    p.ci_apply(&id, &main, "L1", state_doc(1, "P", "")).await;
    let change = p.client("bob").change(&id).await.unwrap();
    assert_eq!(
        (change.readiness.as_str(), change.applied_version),
        ("applied", Some(1))
    );
    let versions = p.t.versions("prod", "network").await;
    assert_eq!(versions[0].principal, "service:ci-prod");
    let write =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .find(|r| r.action == "state:write")
            .unwrap();
    assert_eq!(
        (write.change.as_deref(), write.branch.as_deref()),
        (Some("prod-1"), Some("main"))
    );

    // Used once: the same change again is refused at the lock.
    let path = format!("prod/network?change={id}");
    let again = refusal(p.pipeline(&main).lock(&path).id("L2").send().await).await;
    assert!(
        again.contains("change prod-1 was already applied (version 1)"),
        "{again}"
    );
    assert_eq!(p.t.versions("prod", "network").await.len(), 1);
}

#[tokio::test]
async fn approval_refusals_are_recorded_and_change_nothing() {
    let p = spawn_protected("24h").await;
    let id = p.propose("pat", "prod", "network").await;
    // The author can never approve their own change, even as an approver.
    let own = p
        .client("pat")
        .decide(&id, "approve", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(own.contains("its author can never approve it"), "{own}");
    // Someone outside the approvers.
    let outsider = p
        .client("alice")
        .decide(&id, "approve", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        outsider.contains("user:alice may not approve changes to prod"),
        "{outsider}"
    );
    let change = p.client("alice").change(&id).await.unwrap();
    assert!(change.approvals.is_empty());
    let denied: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.action == "change:approve")
            .collect();
    assert_eq!(denied.len(), 2);
    assert!(denied
        .iter()
        .all(|r| r.decision == bulkhead::audit::Outcome::Deny
            && r.change.as_deref() == Some("prod-1")));
    // An approver counts once.
    p.client("quinn")
        .decide(&id, "approve", None)
        .await
        .unwrap();
    let twice = p
        .client("quinn")
        .decide(&id, "approve", None)
        .await
        .unwrap();
    assert_eq!(twice.approvals.len(), 1);
    // Not a plan: nothing stored.
    let bad = p
        .client("alice")
        .create_change(
            &NewChange {
                environment: "prod",
                state: "network",
                title: None,
                branch: None,
                commit: None,
            },
            b"{\"serial\":1}".to_vec(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(bad.contains("terraform show -json"), "{bad}");
    assert_eq!(
        p.client("alice")
            .changes(Some("prod"), None)
            .await
            .unwrap()
            .changes
            .len(),
        1
    );
}

#[tokio::test]
async fn the_pipeline_is_refused_each_missing_step_by_name() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let expect = |sentence: String, step: &str| {
        assert!(
            sentence.starts_with("service:ci-prod may not write prod (owner: team:platform) now: "),
            "{sentence}"
        );
        assert!(sentence.contains(step), "{sentence} lacks {step}");
    };
    expect(
        refusal(p.pipeline(&main).lock("prod/network").id("L").send().await).await,
        "no change request named",
    );

    let pending = p.propose("alice", "prod", "network").await;
    expect(
        refusal(
            p.pipeline(&main)
                .lock(format!("prod/network?change={pending}"))
                .id("L")
                .send()
                .await,
        )
        .await,
        "is not approved yet (0 of 1 approvals)",
    );

    let other_state = p.approved("database").await;
    expect(
        refusal(
            p.pipeline(&main)
                .lock(format!("prod/network?change={other_state}"))
                .id("L")
                .send()
                .await,
        )
        .await,
        "is for state database, not network",
    );

    let staging = p.propose("alice", "staging", "network").await;
    p.client("pat")
        .decide(&staging, "approve", None)
        .await
        .unwrap();
    expect(
        refusal(
            p.pipeline(&main)
                .lock(format!("prod/network?change={staging}"))
                .id("L")
                .send()
                .await,
        )
        .await,
        "is for environment staging, not prod",
    );

    let approved = p.approved("network").await;
    let feature = p.issuer.token("feature-x", |_| {});
    expect(
        refusal(
            p.pipeline(&feature)
                .lock(format!("prod/network?change={approved}"))
                .id("L")
                .send()
                .await,
        )
        .await,
        "branch feature-x may not apply prod (allowed: main)",
    );

    // A static token proves no branch.
    let static_token =
        p.t.as_("ci-prod")
            .lock(format!("prod/network?change={approved}"))
            .id("L")
            .send()
            .await;
    expect(
        refusal(static_token).await,
        "these credentials prove no branch",
    );

    // An unlocked write (terraform -lock=false) is refused the same way, after the fact.
    let r = p
        .pipeline(&main)
        .post("prod/network", state_doc(1, "P", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert!(p.t.versions("prod", "network").await.is_empty());
    assert!(p
        .t
        .app
        .stores
        .environment("prod")
        .unwrap()
        .held_lock("network")
        .await
        .unwrap()
        .is_none());
    let locks: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.action == "state:lock")
            .collect();
    assert_eq!(locks.len(), 6);
    assert!(locks.iter().all(|r| r.status == Some(423)
        && r.reason
            .as_deref()
            .is_some_and(|s| s.contains("may not write prod"))));
}

#[tokio::test]
async fn approvals_expire() {
    let p = spawn_protected("1h").await;
    let main = p.issuer.token("main", |_| {});
    let id = p.approved("network").await;
    // The approval is valid for an hour.
    p.t.clock.advance(Duration::from_secs(3601));
    let sentence = refusal(
        p.pipeline(&main)
            .lock(format!("prod/network?change={id}"))
            .id("L")
            .send()
            .await,
    )
    .await;
    assert!(
        sentence.contains(&format!("change {id}'s approvals expired")),
        "{sentence}"
    );
    assert_eq!(
        p.client("bob").change(&id).await.unwrap().readiness,
        "expired"
    );
}

#[tokio::test]
async fn forged_expired_and_misaddressed_oidc_tokens_are_401() {
    let p = spawn_protected("24h").await;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let claims = p
        .issuer
        .token("main", |_| {})
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let unsigned = format!("{}.{claims}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = chrono::Utc::now().timestamp();
    let forged = sign(
        &other_key.serialize_pem(),
        &serde_json::json!({"iss": ISSUER, "aud": "bulkhead", "repository": "acme/infra", "ref": "refs/heads/main", "exp": now + 600}),
    );
    let cases = [
        ("alg none", unsigned),
        ("wrong key", forged),
        (
            "wrong audience",
            p.issuer.token("main", |c| c["aud"] = "someone-else".into()),
        ),
        (
            "expired",
            p.issuer.token("main", |c| c["exp"] = (now - 3600).into()),
        ),
        (
            "missing claim",
            p.issuer.token("main", |c| {
                c.as_object_mut().unwrap().remove("repository");
            }),
        ),
        (
            "wrong claim",
            p.issuer
                .token("main", |c| c["repository"] = "evil/infra".into()),
        ),
    ];
    for (what, jwt) in cases {
        let r = p.pipeline(&jwt).get("prod/network").send().await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
        let last = p.t.last_audit("prod").await;
        assert_eq!((last.status, last.principal), (Some(401), None), "{what}");
    }
    let good = p
        .pipeline(&p.issuer.token("main", |_| {}))
        .get("prod/network")
        .send()
        .await;
    assert_status(&good, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn break_glass_is_time_boxed_reasoned_and_loud() {
    let p = spawn_protected("24h").await;
    let pat = p.client("pat");
    let no_reason = pat
        .open_breakglass("prod", "  ", Some("1h"))
        .await
        .unwrap_err()
        .to_string();
    assert!(no_reason.contains("a reason is mandatory"), "{no_reason}");
    let too_long = pat
        .open_breakglass("prod", "db down", Some("3h"))
        .await
        .unwrap_err()
        .to_string();
    assert!(too_long.contains("max_ttl"), "{too_long}");
    let alice = p
        .client("alice")
        .open_breakglass("prod", "db down", None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        alice.contains("user:alice may not break the glass in prod"),
        "{alice}"
    );
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("P0").send().await,
        StatusCode::LOCKED,
    );

    let grant = pat
        .open_breakglass("prod", "database is down", Some("1h"))
        .await
        .unwrap();
    assert_eq!(grant.id, "prod-bg1");
    let listing = p.client("bob").changes(None, None).await.unwrap();
    assert_eq!(listing.breakglass.len(), 1);

    assert_status(
        &p.t.as_("pat").lock("prod/network").id("P1").send().await,
        StatusCode::OK,
    );
    assert_status(
        &p.t.as_("pat")
            .post("prod/network", state_doc(1, "P", ""))
            .lock_id("P1")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &p.t.as_("pat").unlock("prod/network").id("P1").send().await,
        StatusCode::OK,
    );
    let marked: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.breakglass.as_deref() == Some("prod-bg1"))
            .collect();
    assert!(marked.iter().any(|r| r.action == "breakglass:open"));
    assert!(marked
        .iter()
        .any(|r| r.action == "state:write" && r.version == Some(1)));

    pat.close_breakglass(&grant.id).await.unwrap();
    assert!(p
        .client("bob")
        .changes(None, None)
        .await
        .unwrap()
        .breakglass
        .is_empty());
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("P2").send().await,
        StatusCode::LOCKED,
    );
    assert_eq!(p.t.versions("prod", "network").await.len(), 1);
}

#[tokio::test]
async fn break_glass_ends_by_itself() {
    let p = spawn_protected("24h").await;
    p.client("pat")
        .open_breakglass("prod", "database is down", Some("1h"))
        .await
        .unwrap();
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("P1").send().await,
        StatusCode::OK,
    );
    assert_status(
        &p.t.as_("pat").unlock("prod/network").id("P1").send().await,
        StatusCode::OK,
    );
    // The grant lasts an hour.
    p.t.clock.advance(Duration::from_secs(3601));
    assert!(p
        .client("bob")
        .changes(None, None)
        .await
        .unwrap()
        .breakglass
        .is_empty());
    let sentence = refusal(p.t.as_("pat").lock("prod/network").id("P2").send().await).await;
    assert!(
        sentence.contains("user:pat may not write prod"),
        "{sentence}"
    );
}

#[tokio::test]
async fn policy_explain_gives_the_servers_answer_for_a_change_and_branch() {
    let p = spawn_protected("24h").await;
    let approved = p.approved("network").await;
    let feature = p.issuer.token("feature-x", |_| {});
    let path = format!("prod/network?change={approved}");
    let server_says = refusal(p.pipeline(&feature).lock(&path).id("L").send().await).await;
    let explain = |branch: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args([
                "policy",
                "explain",
                "--config",
                "bulkhead.hcl",
                "--principal",
                "ci-prod",
                "--action",
                "state:lock",
                "--operation",
                "OperationTypeApply",
                "--env",
                "prod",
                "--change",
                &approved,
                "--branch",
                branch,
            ])
            .current_dir(p.t.dir.path())
            .output()
    };
    let out = explain("feature-x").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("the refused caller reads: {server_says}\n")),
        "{text}\nthe server said: {server_says}"
    );
    assert!(text.contains("only main may apply"), "{text}");

    let out = explain("main").await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("ALLOW: service:ci-prod state:lock in prod"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{approved} is approved and unused, from allowed branch main"
        )),
        "{text}"
    );
    // Explaining changed nothing: the change is still there to be applied.
    let main = p.issuer.token("main", |_| {});
    p.ci_apply(&approved, &main, "L2", state_doc(1, "P", ""))
        .await;
}
