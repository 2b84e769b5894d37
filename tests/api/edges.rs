//! The edges of the API: requests no route answers, requests whose path or query cannot be
//! read, change ids in other spellings, and text chosen by a client or a plan author reaching
//! a person's terminal. Every such request is recorded; none changes what is stored.

use std::path::Path;
use std::process::Output;

use bulkhead::client::NewChange;
use reqwest::StatusCode;

use crate::changes::{spawn_protected, Protected};
use crate::helpers::*;

/// The real binary, waited for without blocking the test's server.
async fn bulkhead(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .current_dir(dir)
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("BULKHEAD_TOKEN")
        .env_remove("BULKHEAD_ADDR")
        .output()
        .await
        .expect("run bulkhead")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nothing in `out` a terminal would act on: no ESC, no C1 control, no bidi override.
fn assert_inert(out: &str) {
    let bad = out.chars().find(|c| {
        (c.is_control() && *c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    });
    assert_eq!(
        bad, None,
        "a control character reached the terminal:\n{out}"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_answered_with_a_sentence_and_recorded() {
    let t = spawn_app().await;
    let before = t.audit(None).await.len();

    let resp = t
        .client
        .get(format!("{}/v1/nope", t.base()))
        .basic_auth("alice", Some(t.token("alice")))
        .header("User-Agent", "probe/1.0")
        .send()
        .await
        .unwrap();
    assert_status(&resp, StatusCode::NOT_FOUND);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("there is no GET /v1/nope") && body.contains("/v1/state/ENVIRONMENT/NAME"),
        "{body}"
    );
    let records = t.audit(None).await;
    assert_eq!(records.len(), before + 1);
    let r = records.last().unwrap();
    assert_eq!(
        (
            r.action.as_str(),
            r.principal.as_deref(),
            r.source.as_deref(),
            r.user_agent.as_deref(),
            r.status,
            r.decision.as_str()
        ),
        (
            "request:not-found",
            Some("user:alice"),
            Some("127.0.0.1"),
            Some("probe/1.0"),
            Some(404),
            "deny"
        )
    );
    assert!(
        r.reason.as_deref().unwrap().contains("GET /v1/nope"),
        "{r:?}"
    );

    // Wrong credentials name no one, and the answer is the same 404.
    let anonymous = t
        .client
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            format!("{}/{}", t.base(), "x".repeat(5000)),
        )
        .basic_auth("alice", Some("bh_wrong"))
        .send()
        .await
        .unwrap();
    assert_status(&anonymous, StatusCode::NOT_FOUND);
    let r = t.audit(None).await.pop().unwrap();
    assert_eq!(
        (r.action.as_str(), r.principal),
        ("request:not-found", None)
    );
    let reason = r.reason.unwrap();
    assert!(
        reason.contains("BREW /xxx") && reason.len() < 600,
        "the path is capped: {} bytes",
        reason.len()
    );

    // A route that exists, with a method it does not answer: the router names its methods.
    let resp = t
        .client
        .delete(format!("{}/v1/changes", t.base()))
        .basic_auth("bob", Some(t.token("bob")))
        .send()
        .await
        .unwrap();
    assert_status(&resp, StatusCode::METHOD_NOT_ALLOWED);
    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
    assert!(
        allow.contains("GET") && allow.contains("POST") && !allow.contains("LOCK"),
        "{allow}"
    );
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("/v1/changes does not answer DELETE"),
        "{body}"
    );
    let r = t.audit(None).await.pop().unwrap();
    assert_eq!(
        (r.action.as_str(), r.principal.as_deref(), r.status),
        ("request:method-not-allowed", Some("user:bob"), Some(405))
    );
    assert_eq!(t.audit(None).await.len(), before + 3);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn unreadable_queries_and_paths_are_refused_with_a_sentence_and_recorded() {
    let t = spawn_app().await;
    let send = |method: reqwest::Method, path: &str| {
        t.client
            .request(method, format!("{}{path}", t.base()))
            .basic_auth("alice", Some(t.token("alice")))
            .body(state_doc(1, "L", ""))
            .send()
    };

    // A change request without its state: nothing is created.
    let resp = send(reqwest::Method::POST, "/v1/changes?environment=prod")
        .await
        .unwrap();
    assert_status(&resp, StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("the query string was not understood (missing field `state`)")
            && body.contains("?environment=ENV&state=NAME"),
        "{body}"
    );
    let r = t.audit(None).await.pop().unwrap();
    assert_eq!(
        (r.action.as_str(), r.principal.as_deref(), r.status),
        ("change:create", Some("user:alice"), Some(400))
    );
    let listing = bulkhead::client::Client::new(&t.base(), t.token("pat"))
        .changes(None, None)
        .await
        .unwrap();
    assert!(listing.changes.is_empty());

    // A version that is not a number, in the environment's own chain.
    let resp = send(reqwest::Method::GET, "/v1/history/dev/app?version=first")
        .await
        .unwrap();
    assert_status(&resp, StatusCode::BAD_REQUEST);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains(
            "the query string was not understood (version: invalid digit found in string)"
        ),
        "{body}"
    );
    let r = t.last_audit("dev").await;
    assert_eq!(
        (r.action.as_str(), r.state.as_deref(), r.status),
        ("state:history", Some("app"), Some(400))
    );

    // Path parameters that are not UTF-8 once decoded: refused before any write.
    for (path, action) in [
        ("/v1/state/dev/app%FF", "state:write"),
        ("/v1/changes/prod-%FF", "change:read"),
        ("/v1/history/dev/%C3", "state:history"),
    ] {
        let method = if action == "state:write" {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let before = t.audit(None).await.len();
        let resp = send(method, path).await.unwrap();
        assert_status(&resp, StatusCode::BAD_REQUEST);
        let body = resp.text().await.unwrap();
        assert!(body.contains("write it in UTF-8"), "{path}: {body}");
        let records = t.audit(None).await;
        assert_eq!(records.len(), before + 1, "{path}");
        let r = records.last().unwrap();
        assert_eq!((r.action.as_str(), r.status), (action, Some(400)), "{path}");
    }
    assert!(t.versions("dev", "app").await.is_empty());
    assert_audit_verifies(t.dir.path()).await;
}

/// The router served without client addresses: a server fault, answered 500 without detail,
/// and still recorded.
#[tokio::test]
async fn a_request_without_a_client_address_is_recorded() {
    let t = spawn_app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = bulkhead::http::router(t.app.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let resp = t
        .client
        .get(format!("http://{addr}/v1/status"))
        .basic_auth("alice", Some(t.token("alice")))
        .send()
        .await
        .unwrap();
    assert_status(&resp, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!resp.text().await.unwrap().contains("ConnectInfo"));
    let r = t.audit(None).await.pop().unwrap();
    assert_eq!(
        (
            r.action.as_str(),
            r.principal.as_deref(),
            r.source,
            r.status,
            r.decision.as_str()
        ),
        ("status:read", Some("user:alice"), None, Some(500), "error")
    );
}

const ALIASES: [&str; 4] = ["prod-01", "prod-+1", "prod-1 ", " prod-1"];

fn encoded(text: &str) -> String {
    text.replace('+', "%2B").replace(' ', "%20")
}

#[tokio::test]
async fn a_change_id_has_one_spelling_at_the_api() {
    let p = spawn_protected("24h").await;
    let id = p.approved("network").await;
    assert_eq!(id, "prod-1");
    let main = p.issuer.token("main", |_| {});
    let records = p.t.audit(Some("prod")).await.len();
    let server_records = p.t.audit(None).await.len();

    for alias in ALIASES {
        let shown = p.client("bob").change(&encoded(alias)).await.unwrap_err();
        let shown = shown.to_string();
        assert!(
            shown.contains("is not a change id: write ENVIRONMENT-NUMBER")
                && shown.contains("e.g. prod-1")
                && shown.contains("(HTTP 400)"),
            "{alias}: {shown}"
        );
        let approve = p
            .client("quinn")
            .decide(&encoded(alias), "approve", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(approve.contains("(HTTP 400)"), "{alias}: {approve}");

        // The pipeline naming its approved change in another spelling: refused at the lock.
        let path = format!("prod/network?change={}", encoded(alias));
        let resp = p.pipeline(&main).lock(&path).id("L1").send().await;
        assert_status(&resp, StatusCode::LOCKED);
        let info: serde_json::Value = resp.json().await.unwrap();
        let sentence = info["ID"].as_str().unwrap();
        assert!(
            sentence.contains("is not a change id: write ENVIRONMENT-NUMBER"),
            "{alias}: {sentence}"
        );
        let post = p
            .pipeline(&main)
            .post(&path, state_doc(1, "P", ""))
            .send()
            .await;
        assert_ne!(post.status(), StatusCode::OK, "{alias}");
    }
    // Nothing moved: no version, no lock, the change still approved and unused.
    assert!(p.t.versions("prod", "network").await.is_empty());
    let change = p.client("bob").change(&id).await.unwrap();
    assert_eq!(
        (
            change.readiness.as_str(),
            change.approvals.len(),
            change.applied_version
        ),
        ("approved", 1, None)
    );
    // Every refusal recorded, none allowed: reading and approving in the server's chain (an
    // unreadable id names no environment), the pipeline's lock and write in prod's.
    let served = &p.t.audit(None).await[server_records..];
    for action in ["change:read", "change:approve"] {
        let refused: Vec<_> = served.iter().filter(|r| r.action == action).collect();
        assert_eq!(refused.len(), ALIASES.len(), "{action}");
        assert!(refused
            .iter()
            .all(|r| r.status == Some(400) && r.change.is_none()));
    }
    let records = &p.t.audit(Some("prod")).await[records..];
    for action in ["state:lock", "state:write"] {
        let refused: Vec<_> = records.iter().filter(|r| r.action == action).collect();
        assert_eq!(refused.len(), ALIASES.len(), "{action}");
        assert!(
            refused.iter().all(|r| r.decision.as_str() == "deny"),
            "{refused:?}"
        );
    }

    // The one spelling still works, and its records find it.
    p.ci_apply(&id, &main, "L2", state_doc(1, "P", "")).await;
    let applied: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.decision.as_str() == "allow" && r.action.starts_with("state:"))
            .collect();
    assert_eq!(applied.len(), 3);
    assert!(applied
        .iter()
        .all(|r| r.change.as_deref() == Some("prod-1")));
}

#[tokio::test]
async fn a_change_id_has_one_spelling_on_the_command_line() {
    let p = spawn_protected("24h").await;
    let id = p.approved("network").await;
    let dir = p.t.dir.path();
    let base = p.t.base();
    let server = ["--server", base.as_str(), "--token", p.t.token("pat")];
    let records = p.t.audit(Some("prod")).await.len();

    for alias in ALIASES {
        for args in [
            vec!["change", "show", alias],
            vec!["change", "approve", alias],
            vec!["change", "reject", alias],
            vec!["change", "cancel", alias],
            vec![
                "state",
                "rollback",
                "prod/network",
                "--to",
                "1",
                "--change",
                alias,
            ],
        ] {
            let out = bulkhead(dir, &[args.as_slice(), &server].concat()).await;
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&out.stderr)
            );
            let err = text(&out.stderr);
            assert!(
                err.contains("is not a change id: write ENVIRONMENT-NUMBER, the number in decimal without sign, leading zeros or spaces, e.g. prod-1"),
                "{args:?}: {err}"
            );
        }
        let local: [&[&str]; 2] = [
            &[
                "audit",
                "log",
                "--config",
                "bulkhead.hcl",
                "--change",
                alias,
            ],
            &[
                "policy",
                "explain",
                "--config",
                "bulkhead.hcl",
                "--principal",
                "ci-prod",
                "--action",
                "state:write",
                "--env",
                "prod",
                "--change",
                alias,
            ],
        ];
        for args in local {
            let out = bulkhead(dir, args).await;
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&out.stderr)
            );
            assert!(text(&out.stderr).contains("is not a change id"), "{args:?}");
        }
    }
    // Refused before asking the server: nothing was sent, nothing changed.
    assert_eq!(p.t.audit(Some("prod")).await.len(), records);
    let change = p.client("bob").change(&id).await.unwrap();
    assert_eq!(change.readiness, "approved");

    let found = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--change",
            "prod-1",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(found.status.success(), "{}", text(&found.stderr));
    assert_eq!(
        text(&found.stdout).lines().count(),
        3,
        "its creation, its approval and the read above: {}",
        text(&found.stdout)
    );
}

/// A plan whose author chose its addresses and title to redraw the reviewer's screen.
const CRAFTED_PLAN: &str = r#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
  "resource_changes":[
    {"address":"aws_db.main\u001b[2J\u001b[HPlan: 0 to add, 0 to change, 0 to destroy.","change":{"actions":["delete"]}},
    {"address":"aws_vpc.\u202egnirts\u202c","change":{"actions":["create"]}},
    {"address":"aws_c1.\u009b2J","change":{"actions":["update"]}}]}"#;

const CRAFTED_TITLE: &str = "tidy up\u{1b}]0;approved\u{7}\u{1b}[1A";

async fn propose_crafted(p: &Protected) -> String {
    let new = NewChange {
        environment: "prod",
        state: "network",
        title: Some(CRAFTED_TITLE),
        branch: Some("main\u{1b}[31m"),
        commit: None,
    };
    p.client("alice")
        .create_change(&new, CRAFTED_PLAN.as_bytes().to_vec())
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn a_crafted_plan_cannot_redraw_its_review() {
    let p = spawn_protected("24h").await;
    let id = propose_crafted(&p).await;
    let dir = p.t.dir.path();
    let base = p.t.base();
    let server = ["--server", base.as_str(), "--token", p.t.token("pat")];

    let show = bulkhead(
        dir,
        &[&["change", "show", id.as_str()][..], &server].concat(),
    )
    .await;
    assert!(show.status.success(), "{}", text(&show.stderr));
    let out = text(&show.stdout);
    assert_inert(&out);
    assert!(
        out.contains("  - aws_db.main\\x1b[2J\\x1b[HPlan: 0 to add, 0 to change, 0 to destroy.   (DESTROYED)"),
        "{out}"
    );
    assert!(
        out.contains("Plan: 1 to add, 1 to change, 1 to destroy."),
        "{out}"
    );
    assert!(
        out.contains("  + aws_vpc.\\u{202e}gnirts\\u{202c}"),
        "{out}"
    );
    assert!(out.contains("  ~ aws_c1.\\u{9b}2J"), "{out}");
    assert!(
        out.contains("Change prod-1: tidy up\\x1b]0;approved\\x07\\x1b[1A"),
        "{out}"
    );
    assert!(out.contains("branch main\\x1b[31m"), "{out}");

    let list = bulkhead(dir, &[&["change", "list"][..], &server].concat()).await;
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_inert(&text(&list.stdout));
    assert!(text(&list.stdout).contains("tidy up\\x1b]0;approved"));

    // JSON stays exact: the same text, for a script to judge.
    let json = bulkhead(
        dir,
        &[
            &["change", "show", id.as_str(), "--format", "json"][..],
            &server,
        ]
        .concat(),
    )
    .await;
    let change: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(change["title"], CRAFTED_TITLE);
    assert_eq!(
        change["summary"]["destroy"][0],
        "aws_db.main\u{1b}[2J\u{1b}[HPlan: 0 to add, 0 to change, 0 to destroy."
    );

    // A reason chosen by the rejecter, and shown by every renderer that prints it.
    let reject = bulkhead(
        dir,
        &[
            &["change", "reject", id.as_str(), "--reason", "no\u{1b}[2K"][..],
            &server,
        ]
        .concat(),
    )
    .await;
    assert!(reject.status.success(), "{}", text(&reject.stderr));
    let log = bulkhead(
        dir,
        &["audit", "log", "--config", "bulkhead.hcl", "--env", "prod"],
    )
    .await;
    let log = text(&log.stdout);
    assert_inert(&log);
    assert!(log.contains("(no\\x1b[2K)"), "{log}");
}

#[tokio::test]
async fn request_text_in_the_audit_log_status_and_history_is_shown_escaped() {
    let t = spawn_app().await;
    let dir = t.dir.path();

    // A state name from the URL, refused, and recorded as sent.
    let resp = t
        .client
        .get(format!("{}/v1/state/dev/%1B%5B2J%E2%80%AEevil", t.base()))
        .basic_auth("alice", Some(t.token("alice")))
        .header("User-Agent", "curl/8.4 (crafted)")
        .send()
        .await
        .unwrap();
    assert_status(&resp, StatusCode::BAD_REQUEST);
    assert_eq!(
        t.last_audit("dev").await.state.as_deref(),
        Some("\u{1b}[2J\u{202e}evil")
    );

    // A lock whose operation redraws the screen, and a write under it.
    let info = serde_json::json!({
        "ID": "L1", "Operation": "OperationTypeApply\u{1b}[2J", "Info": "",
        "Who": "dev@laptop\u{1b}]8;;http://x\u{7}", "Version": "1.11.4",
        "Created": "2026-11-27T10:00:00.000000000Z", "Path": "",
    })
    .to_string();
    let lock = t
        .as_("alice")
        .request("LOCK", "dev/app")
        .body(info.into_bytes())
        .send()
        .await;
    assert_status(&lock, StatusCode::OK);
    let post = t
        .as_("alice")
        .post("dev/app", state_doc(1, "L", ""))
        .lock_id("L1")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);

    let base = t.base();
    let server = ["--server", base.as_str(), "--token", t.token("alice")];
    let status = bulkhead(dir, &[&["status"][..], &server].concat()).await;
    assert!(status.status.success(), "{}", text(&status.stderr));
    let out = text(&status.stdout);
    assert_inert(&out);
    assert!(out.contains("(OperationTypeApply\\x1b[2J)"), "{out}");

    let history = bulkhead(
        dir,
        &[&["state", "history", "dev/app"][..], &server].concat(),
    )
    .await;
    assert!(history.status.success(), "{}", text(&history.stderr));
    let out = text(&history.stdout);
    assert_inert(&out);
    assert!(out.contains("OperationTypeApply\\x1b[2J"), "{out}");

    let log = bulkhead(
        dir,
        &["audit", "log", "--config", "bulkhead.hcl", "--env", "dev"],
    )
    .await;
    let out = text(&log.stdout);
    assert_inert(&out);
    assert!(out.contains("\\x1b[2J\\u{202e}evil"), "{out}");
    assert!(
        out.contains("from 127.0.0.1 \"curl/8.4 (crafted)\""),
        "{out}"
    );

    // JSON output keeps the exact text.
    let json = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--env",
            "dev",
            "--format",
            "json",
        ],
    )
    .await;
    let first: serde_json::Value =
        serde_json::from_str(text(&json.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["state"], "\u{1b}[2J\u{202e}evil");
}
