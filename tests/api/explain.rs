//! `bulkhead policy explain` says what the server does: for every kind of refusal a state
//! request can get, and for a reader's plan lock, the request is sent to the server and
//! explain is asked the same question, and the two must agree on whether it is allowed, on
//! what decided (the `policy` of the server's audit record), and on the sentence the refused
//! caller reads (or the note of an allowed one).
//!
//! Explain judges the policies and the grants; it is not told the lock a state holds at that
//! moment, nor a lock ID. A refusal that comes from the lock of the moment (423 for another
//! holder, 409 for a lock ID not held) is therefore checked for what both must still share:
//! the server consulted the policies explain renders, they allowed the caller, and the refusal
//! the caller reads is the lock's, not a policy's.

use reqwest::StatusCode;

use crate::changes::spawn_protected;
use crate::helpers::*;

/// One question, put to the server as a request and to explain as its flags.
struct Question<'a> {
    principal: &'a str,
    /// As explain names it, e.g. `state:write`; the server's audit record names the same.
    action: &'a str,
    env: &'a str,
    state: &'a str,
    /// The lock operation, for a LOCK or UNLOCK.
    operation: &'a str,
    /// The branch the caller's OIDC token proves.
    branch: Option<&'a str>,
}

/// What the server answered, and what its audit record says decided.
#[derive(Debug)]
struct ServerSaid {
    status: StatusCode,
    /// The refusal's sentence: a 403's or 409's body, a 423's LockInfo ID.
    sentence: Option<String>,
    /// The audit record's `policy`.
    decided_by: Option<String>,
    /// The audit record's `reason`.
    reason: Option<String>,
}

/// What `bulkhead policy explain --format json` said.
#[derive(Debug)]
struct Explained {
    code: Option<i32>,
    allowed: bool,
    decided_by: String,
    refusal: Option<String>,
    note: Option<String>,
    output: String,
}

/// The server's answer to `resp`, and the newest audit record of `q.action` in `q.env`,
/// which is the request's.
async fn server_said(t: &TestApp, q: &Question<'_>, resp: reqwest::Response) -> ServerSaid {
    let status = resp.status();
    let sentence = match status {
        StatusCode::OK => None,
        StatusCode::LOCKED => {
            let info: serde_json::Value = resp.json().await.expect("a 423 carries a LockInfo");
            Some(info["ID"].as_str().expect("a LockInfo ID").to_string())
        }
        _ => Some(
            resp.text()
                .await
                .expect("a refusal's body")
                .trim_end()
                .to_string(),
        ),
    };
    let record = t.newest_audit(q.env, |r| r.action == q.action).await;
    ServerSaid {
        status,
        sentence,
        decided_by: record.policy,
        reason: record.reason,
    }
}

async fn explain(t: &TestApp, q: &Question<'_>) -> Explained {
    let mut args = vec![
        "policy",
        "explain",
        "--config",
        "bulkhead.hcl",
        "--format",
        "json",
        "--principal",
        q.principal,
        "--action",
        q.action,
        "--env",
        q.env,
        "--state",
        q.state,
    ];
    if !q.operation.is_empty() {
        args.extend(["--operation", q.operation]);
    }
    if let Some(branch) = q.branch {
        args.extend(["--branch", branch]);
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(&args)
        .current_dir(t.dir.path())
        .output()
        .await
        .expect("run bulkhead policy explain");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("explain prints JSON ({e}):\n{output}"));
    let text = |key: &str| json[key].as_str().map(str::to_string);
    Explained {
        code: out.status.code(),
        allowed: json["allowed"]
            .as_bool()
            .unwrap_or_else(|| panic!("explain says allowed or not:\n{output}")),
        decided_by: text("decided_by")
            .unwrap_or_else(|| panic!("explain says what decided:\n{output}")),
        refusal: text("refusal"),
        note: text("note"),
        output,
    }
}

/// What the server said of `resp` and what explain says of `q` agree in full (see
/// [`assert_agree`]); explain's answer, for a closer look.
async fn agrees(t: &TestApp, what: &str, q: &Question<'_>, resp: reqwest::Response) -> Explained {
    let server = server_said(t, q, resp).await;
    let explained = explain(t, q).await;
    assert_agree(what, &server, &explained);
    explained
}

/// The server and explain agree in full: allowed or refused alike, decided by the same
/// rules, and the same sentence (or note) for the caller.
fn assert_agree(what: &str, server: &ServerSaid, explained: &Explained) {
    let context = format!(
        "{what}\nthe server: {server:?}\nexplain: {}",
        explained.output
    );
    let allowed = server.status == StatusCode::OK;
    assert_eq!(explained.allowed, allowed, "allowed? {context}");
    assert_eq!(
        explained.code,
        Some(if allowed { 0 } else { 1 }),
        "exit code: {context}"
    );
    assert_eq!(
        Some(&explained.decided_by),
        server.decided_by.as_ref(),
        "decided by: {context}"
    );
    if allowed {
        assert_eq!(explained.note, server.reason, "note: {context}");
    } else {
        assert_eq!(explained.refusal, server.sentence, "sentence: {context}");
    }
}

/// A refusal that comes from the lock of the moment: the server consulted the policies that
/// explain renders, they allowed the caller, and the sentence is `lock_sentence`'s.
fn assert_refused_by_the_lock(
    what: &str,
    server: &ServerSaid,
    explained: &Explained,
    want_status: StatusCode,
    lock_sentence: &str,
) {
    let context = format!(
        "{what}\nthe server: {server:?}\nexplain: {}",
        explained.output
    );
    assert_eq!(server.status, want_status, "{context}");
    assert!(
        server
            .sentence
            .as_deref()
            .is_some_and(|s| s.starts_with(lock_sentence)),
        "the lock's sentence: {context}"
    );
    assert!(explained.allowed, "the policies allow it: {context}");
    assert_eq!(explained.code, Some(0), "exit code: {context}");
    assert_eq!(
        Some(&explained.decided_by),
        server.decided_by.as_ref(),
        "decided by: {context}"
    );
    assert_eq!(explained.refusal, None, "{context}");
}

/// A developer on prod (which only the prod pipeline writes): each write-like request is
/// refused by the policies, a plan lock is granted as a reader's; explain says each alike.
#[tokio::test]
async fn explain_agrees_with_the_server_on_a_developer_in_prod() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("ci-prod")
            .post("prod/network", state_doc(1, "P", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let before = t.versions("prod", "network").await.len();
    let ask = |action, operation| Question {
        principal: "alice",
        action,
        env: "prod",
        state: "network",
        operation,
        branch: None,
    };

    let q = ask("state:write", "");
    let resp = t
        .as_("alice")
        .post("prod/network", state_doc(2, "P", ""))
        .send()
        .await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(&t, "a 403 write", &q, resp).await;

    let q = ask("state:lock", "OperationTypeApply");
    let resp = t.as_("alice").lock("prod/network").id("APPLY").send().await;
    assert_status(&resp, StatusCode::LOCKED);
    agrees(
        &t,
        "a LOCK for an apply, refused with the sentence as its ID",
        &q,
        resp,
    )
    .await;

    let q = ask("state:delete", "");
    let resp = t.as_("alice").delete("prod/network").send().await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(&t, "a 403 DELETE", &q, resp).await;

    let q = ask("state:rollback", "");
    let resp = t
        .client
        .post(format!(
            "{}/v1/history/prod/network?rollback_to=1",
            t.base()
        ))
        .basic_auth("alice", Some(t.token("alice")))
        .send()
        .await
        .expect("request reaches the server");
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(&t, "a 403 rollback", &q, resp).await;

    let q = ask("state:force-unlock", "");
    let resp = t
        .as_("alice")
        .request("UNLOCK", "prod/network")
        .body(Vec::new())
        .send()
        .await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(&t, "a 403 force-unlock", &q, resp).await;

    let q = ask("state:lock", "OperationTypePlan");
    let resp = t
        .as_("alice")
        .lock("prod/network")
        .id("PLAN")
        .operation("OperationTypePlan")
        .send()
        .await;
    assert_status(&resp, StatusCode::OK);
    let explained = agrees(&t, "a reader's plan lock", &q, resp).await;
    assert!(
        explained
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("read-only plan lock")),
        "{}",
        explained.output
    );

    assert_eq!(t.versions("prod", "network").await.len(), before);
}

/// Refusals that come from the lock a state holds: another member's LOCK (423 naming the
/// holder), a reader's UNLOCK of the pipeline's lock (403: a force-unlock they may not do),
/// and a write naming a lock ID that is not held (409).
#[tokio::test]
async fn explain_agrees_with_the_server_on_refusals_by_the_lock_held() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("A").send().await,
        StatusCode::OK,
    );
    let ask = |action, operation| Question {
        principal: "bob",
        action,
        env: "dev",
        state: "app",
        operation,
        branch: None,
    };

    let q = ask("state:lock", "OperationTypeApply");
    let resp = t.as_("bob").lock("dev/app").id("B").send().await;
    let server = server_said(&t, &q, resp).await;
    assert_refused_by_the_lock(
        "a LOCK of a state another member holds",
        &server,
        &explain(&t, &q).await,
        StatusCode::LOCKED,
        "A held by user:alice",
    );

    // Releasing another's lock is judged as a force-unlock, which a reader may not do: the
    // sentence names the lock, then gives the policies' refusal, explain's.
    assert_status(
        &t.as_("ci-prod").lock("prod/network").id("CI").send().await,
        StatusCode::OK,
    );
    let q = Question {
        principal: "alice",
        env: "prod",
        state: "network",
        ..ask("state:force-unlock", "OperationTypeApply")
    };
    let resp = t.as_("alice").unlock("prod/network").id("CI").send().await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    let server = server_said(&t, &q, resp).await;
    let explained = explain(&t, &q).await;
    let context = format!("the server: {server:?}\nexplain: {}", explained.output);
    assert!(!explained.allowed, "{context}");
    assert_eq!(explained.code, Some(1), "{context}");
    assert_eq!(
        Some(&explained.decided_by),
        server.decided_by.as_ref(),
        "{context}"
    );
    let policies = explained.refusal.as_deref().expect("explain's refusal");
    assert_eq!(
        server.sentence,
        Some(format!(
            "lock CI was taken by service:ci-prod, not user:alice: releasing it is a force-unlock; {policies}"
        )),
        "{context}"
    );

    let q = Question {
        principal: "alice",
        state: "other",
        ..ask("state:write", "")
    };
    let resp = t
        .as_("alice")
        .post("dev/other", state_doc(1, "L", ""))
        .lock_id("GONE")
        .send()
        .await;
    let server = server_said(&t, &q, resp).await;
    assert_refused_by_the_lock(
        "a write under a lock ID that is not held",
        &server,
        &explain(&t, &q).await,
        StatusCode::CONFLICT,
        "lock GONE is not held",
    );
    assert!(t.versions("dev", "other").await.is_empty());
}

/// In an environment under change control: the pipeline's LOCK and write without a change
/// are refused with the missing step, a reader's plan lock is granted, and the owner's
/// force-unlock naming a lock that is not the one held is a 409.
#[tokio::test]
async fn explain_agrees_with_the_server_under_change_control() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let t = &p.t;
    let ask = |principal, action, operation| Question {
        principal,
        action,
        env: "prod",
        state: "network",
        operation,
        branch: None,
    };

    let q = Question {
        branch: Some("main"),
        ..ask("ci-prod", "state:lock", "OperationTypeApply")
    };
    let resp = p
        .pipeline(&main)
        .lock("prod/network")
        .id("NOCHANGE")
        .send()
        .await;
    assert_status(&resp, StatusCode::LOCKED);
    agrees(t, "the pipeline's LOCK naming no change", &q, resp).await;

    let q = Question {
        branch: Some("main"),
        ..ask("ci-prod", "state:write", "")
    };
    let resp = p
        .pipeline(&main)
        .post("prod/network", state_doc(1, "P", ""))
        .send()
        .await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(
        t,
        "the pipeline's unlocked write naming no change",
        &q,
        resp,
    )
    .await;

    let q = ask("alice", "state:lock", "OperationTypePlan");
    let resp = t
        .as_("alice")
        .lock("prod/network")
        .id("PLAN")
        .operation("OperationTypePlan")
        .send()
        .await;
    assert_status(&resp, StatusCode::OK);
    agrees(t, "a reader's plan lock under change control", &q, resp).await;

    let q = ask("pat", "state:delete", "");
    let resp = t.as_("pat").delete("prod/network").send().await;
    assert_status(&resp, StatusCode::FORBIDDEN);
    agrees(t, "the owner's DELETE without a change", &q, resp).await;

    let first = p.approved("network").await;
    let path = format!("prod/network?change={first}");
    assert_status(
        &p.pipeline(&main).lock(&path).id("L1").send().await,
        StatusCode::OK,
    );
    let q = ask("pat", "state:force-unlock", "");
    let resp = t
        .as_("pat")
        .request("UNLOCK", "prod/network")
        .body(br#"{"ID":"OTHER"}"#.to_vec())
        .send()
        .await;
    let server = server_said(t, &q, resp).await;
    assert_refused_by_the_lock(
        "a force-unlock naming a lock that is not held",
        &server,
        &explain(t, &q).await,
        StatusCode::CONFLICT,
        "lock OTHER is not the lock held: L1 held by service:ci-prod",
    );
}
