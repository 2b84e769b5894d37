//! The production boundary, attacked as an attacker would: lock IDs replayed by other
//! identities, crafted UNLOCK bodies, a change aimed at another state or environment, repeated
//! query parameters, another principal's break-glass, a change reused after DELETE or
//! rollback, requests racing each other on one server and on two, and `policy explain` held
//! against the server's answer. Each attack is checked to be refused and to leave the versions,
//! the lock and the changes as they were.

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::authority::{apply_under_way, delete_under_breakglass, snapshot};
use crate::changes::{protected_config, refusal, spawn_protected, Issuer, Protected};
use crate::helpers::*;

/// A token of the main branch's pipeline, but of another workflow (another `sub`).
fn other_workflow(p: &Protected) -> String {
    p.issuer.token("main", |c| {
        c["sub"] = "repo:acme/infra:environment:sandbox".into();
    })
}

/// The lock `state` of prod is held under, as `ID principal branch`.
async fn held(p: &Protected, state: &str) -> Option<String> {
    snapshot(p, state).await.1
}

/// A request as `ci-prod` with `jwt` to another server instance.
async fn ci_on(base: &str, method: &str, path: &str, jwt: &str, body: Vec<u8>) -> StatusCode {
    reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{base}/v1/state/{path}"),
        )
        .basic_auth("ci-prod", Some(jwt))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// `POST /v1/history/prod/network?{query}` with the pipeline's token.
async fn rollback(p: &Protected, jwt: &str, query: &str) -> reqwest::Response {
    p.t.client
        .post(format!("{}/v1/history/prod/network?{query}", p.t.base()))
        .basic_auth("ci-prod", Some(jwt))
        .send()
        .await
        .unwrap()
}

/// `bulkhead policy explain` on the test's config: its exit code and output.
async fn explain(t: &TestApp, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["policy", "explain", "--config", "bulkhead.hcl"])
        .args(args)
        .current_dir(t.dir.path())
        .output()
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The body of a refusal answered with a sentence, without its newline.
async fn sentence(resp: reqwest::Response, want: StatusCode) -> String {
    assert_status(&resp, want);
    resp.text().await.unwrap().trim_end().to_string()
}

#[tokio::test]
async fn relocking_with_the_holders_lock_id_takes_nothing() {
    let p = spawn_protected("24h").await;
    let (_, main, path) = apply_under_way(&p, "MAIN").await;
    let before = snapshot(&p, "network").await;

    // Another branch, another workflow of the right branch, and the static token each present
    // the held lock's ID with the same approved change.
    let feature = p.issuer.token("feature-x", |_| {});
    let text = refusal(p.pipeline(&feature).lock(&path).id("MAIN").send().await).await;
    assert!(
        text.contains("branch feature-x may not apply prod"),
        "{text}"
    );
    let text = refusal(
        p.pipeline(&other_workflow(&p))
            .lock(&path)
            .id("MAIN")
            .send()
            .await,
    )
    .await;
    assert!(text.starts_with("MAIN held by service:ci-prod"), "{text}");
    let text = refusal(p.t.as_("ci-prod").lock(&path).id("MAIN").send().await).await;
    assert!(text.contains("these credentials prove no branch"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);

    // The holder's own retry is granted and changes nothing (nor the lock's time).
    assert_status(
        &p.pipeline(&main).lock(&path).id("MAIN").send().await,
        StatusCode::OK,
    );
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn another_member_cannot_relock_or_write_under_a_members_lock() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("A").send().await,
        StatusCode::OK,
    );
    let relock = t.as_("bob").lock("dev/app").id("A").send().await;
    let text = refusal(relock).await;
    assert!(text.starts_with("A held by user:alice"), "{text}");
    let write = t
        .as_("bob")
        .post("dev/app", state_doc(1, "B", ""))
        .lock_id("A")
        .send()
        .await;
    assert_status(&write, StatusCode::LOCKED);
    let put = t
        .as_("bob")
        .request("PUT", "dev/app?ID=A")
        .body(state_doc(1, "B", ""))
        .send()
        .await;
    assert_status(&put, StatusCode::LOCKED);
    assert!(t.versions("dev", "app").await.is_empty());
    let lock = t
        .app
        .stores
        .environment("dev")
        .unwrap()
        .held_lock("app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (lock.lock_id.as_str(), lock.principal.as_str()),
        ("A", "user:alice")
    );
}

#[tokio::test]
async fn a_readers_plan_lock_id_lends_nothing() {
    let p = spawn_protected("24h").await;
    let change = p.approved("network").await;
    let main = p.issuer.token("main", |_| {});
    assert_status(
        &p.t.as_("alice")
            .lock("prod/network")
            .id("PLAN")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    let before = snapshot(&p, "network").await;

    // The pipeline, with an approved change, writes under a reader's plan lock: not a lock.
    let post = p
        .pipeline(&main)
        .post(
            format!("prod/network?change={change}&ID=PLAN"),
            state_doc(1, "P", ""),
        )
        .send()
        .await;
    let text = sentence(post, StatusCode::CONFLICT).await;
    assert!(text.contains("lock PLAN is not held"), "{text}");
    // Another reader writes or releases under it.
    let post =
        p.t.as_("bob")
            .post("prod/network", state_doc(1, "B", ""))
            .lock_id("PLAN")
            .send()
            .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    assert_status(
        &p.t.as_("bob")
            .unlock("prod/network")
            .id("PLAN")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_eq!(snapshot(&p, "network").await, before);
    // ...which released nothing of alice's.
    assert_status(
        &p.t.as_("alice")
            .unlock("prod/network")
            .id("PLAN")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    let released = p.t.last_audit("prod").await;
    assert_eq!(
        (released.principal.as_deref(), released.reason.as_deref()),
        (Some("user:alice"), Some("released a read-only plan lock"))
    );

    // A reader's plan lock under the ID of the pipeline's lock: granted, blocking nobody, and
    // it neither writes nor releases the pipeline's lock.
    let path = format!("prod/network?change={change}");
    assert_status(
        &p.pipeline(&main).lock(&path).id("MAIN").send().await,
        StatusCode::OK,
    );
    let before = snapshot(&p, "network").await;
    assert_status(
        &p.t.as_("alice")
            .lock("prod/network")
            .id("MAIN")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &p.t.as_("alice")
            .unlock("prod/network")
            .id("MAIN")
            .operation("OperationTypePlan")
            .send()
            .await,
        StatusCode::FORBIDDEN,
    );
    let post =
        p.t.as_("alice")
            .post("prod/network", state_doc(1, "A", ""))
            .lock_id("MAIN")
            .send()
            .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    // The same service from another branch, planning without a change, likewise.
    let feature = p.issuer.token("feature-x", |_| {});
    let plan = lock_info("MAIN", "OperationTypePlan").into_bytes();
    assert_status(
        &p.pipeline(&feature)
            .request("LOCK", "prod/network")
            .body(plan.clone())
            .send()
            .await,
        StatusCode::OK,
    );
    let post = p
        .pipeline(&feature)
        .post("prod/network?ID=MAIN", state_doc(1, "F", ""))
        .send()
        .await;
    assert_status(&post, StatusCode::FORBIDDEN);
    assert_status(
        &p.pipeline(&feature)
            .request("UNLOCK", "prod/network")
            .body(plan)
            .send()
            .await,
        StatusCode::FORBIDDEN,
    );
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn crafted_unlock_bodies_release_nothing_without_force_unlock() {
    let p = spawn_protected("24h").await;
    let (change, _, path) = apply_under_way(&p, "MAIN").await;
    // The 423 body anyone trying to lock reads: the holder's LockInfo, its ID the sentence.
    let seen = p
        .pipeline(&other_workflow(&p))
        .lock(&path)
        .id("X")
        .send()
        .await;
    assert_status(&seen, StatusCode::LOCKED);
    let seen = seen.text().await.unwrap();
    let seen_id: String = serde_json::from_str::<serde_json::Value>(&seen).unwrap()["ID"]
        .as_str()
        .unwrap()
        .into();
    let before = snapshot(&p, "network").await;

    let bodies: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "empty (terraform force-unlock)",
            Vec::new(),
            StatusCode::FORBIDDEN,
        ),
        ("whitespace", b" \n".to_vec(), StatusCode::FORBIDDEN),
        (
            "an ID alone (OpenTofu)",
            br#"{"ID":"MAIN"}"#.to_vec(),
            StatusCode::FORBIDDEN,
        ),
        (
            "the 423 text as ID",
            serde_json::json!({ "ID": seen_id })
                .to_string()
                .into_bytes(),
            StatusCode::FORBIDDEN,
        ),
        (
            "an empty ID with the rest",
            lock_info("", "OperationTypeApply").into_bytes(),
            StatusCode::FORBIDDEN,
        ),
        (
            "the holder's LockInfo rebuilt",
            lock_info("MAIN", "OperationTypeApply").into_bytes(),
            StatusCode::FORBIDDEN,
        ),
        (
            "the 423 body whole",
            seen.clone().into_bytes(),
            StatusCode::LOCKED,
        ),
    ];
    let feature = p.issuer.token("feature-x", |_| {});
    for (what, body, want) in &bodies {
        let r = p
            .pipeline(&feature)
            .request("UNLOCK", &path)
            .body(body.clone())
            .send()
            .await;
        assert_eq!(r.status(), *want, "feature branch, {what}");
        let r =
            p.t.as_("ci-prod")
                .request("UNLOCK", &path)
                .body(body.clone())
                .send()
                .await;
        assert_eq!(r.status(), *want, "static token, {what}");
        let r =
            p.t.as_("alice")
                .request("UNLOCK", "prod/network")
                .body(body.clone())
                .send()
                .await;
        assert_eq!(r.status(), *want, "a reader, {what}");
    }
    assert_eq!(snapshot(&p, "network").await, before);
    let refused: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.action == "state:force-unlock")
            .collect();
    assert_eq!(refused.len(), 18);
    assert!(refused
        .iter()
        .all(|r| r.decision == bulkhead::audit::Outcome::Deny && r.status == Some(403)));

    // The owner's force-unlock must name the lock held, if it names one.
    let wrong =
        p.t.as_("pat")
            .request("UNLOCK", "prod/network")
            .body(br#"{"ID":"OTHER"}"#.to_vec())
            .send()
            .await;
    assert_status(&wrong, StatusCode::CONFLICT);
    assert_eq!(snapshot(&p, "network").await, before);
    let body = serde_json::json!({ "ID": seen_id })
        .to_string()
        .into_bytes();
    assert_status(
        &p.t.as_("pat")
            .request("UNLOCK", "prod/network")
            .body(body)
            .send()
            .await,
        StatusCode::OK,
    );
    assert_eq!(held(&p, "network").await, None);
    // Nothing was written under the lock: the change is still there to be applied.
    let unused = p.client("pat").change(&change).await.unwrap();
    assert_eq!(unused.readiness, "approved");
}

#[tokio::test]
async fn a_change_binds_the_exact_state_name_and_environment() {
    let p = spawn_protected("24h").await;
    let change = p.approved("network").await;
    let main = p.issuer.token("main", |_| {});
    let lock = |path: String| {
        let main = main.clone();
        let p = &p;
        async move { p.pipeline(&main).lock(&path).id("L").send().await }
    };
    let text = refusal(lock(format!("prod/Network?change={change}")).await).await;
    assert!(text.contains("is for state network, not Network"), "{text}");
    let text = refusal(lock(format!("prod/network/x?change={change}")).await).await;
    assert!(
        text.contains("is for state network, not network/x"),
        "{text}"
    );
    for path in [
        "prod/network/",
        "prod/network%2F",
        "prod/network%20",
        "prod//network",
    ] {
        let r = lock(format!("{path}?change={change}")).await;
        assert_status(&r, StatusCode::BAD_REQUEST);
    }
    let upper = change.to_uppercase();
    let text = refusal(lock(format!("prod/network?change={upper}")).await).await;
    assert!(
        text.contains(&format!("`{upper}` is not a change id")),
        "{text}"
    );
    let text = refusal(lock(format!("prod/network?change={change}%20")).await).await;
    assert!(text.contains("is not a change id"), "{text}");
    let staging = p.propose("alice", "staging", "network").await;
    p.client("pat")
        .decide(&staging, "approve", None)
        .await
        .unwrap();
    let text = refusal(lock(format!("prod/network?change={staging}")).await).await;
    assert!(
        text.contains("is for environment staging, not prod"),
        "{text}"
    );
    let text = refusal(lock(format!("staging/network?change={change}")).await).await;
    assert!(
        text.contains("is for environment prod, not staging"),
        "{text}"
    );
    assert!(p.t.versions("prod", "network").await.is_empty());
    assert_eq!(held(&p, "network").await, None);
    assert_eq!(held(&p, "Network").await, None);

    // Percent-encoding spells the same name: it is the same state, and the same change.
    assert_status(
        &lock(format!("prod/%6Eetwork?change={change}")).await,
        StatusCode::OK,
    );
    assert!(held(&p, "network")
        .await
        .unwrap()
        .starts_with("L service:ci-prod"));
}

#[tokio::test]
async fn a_query_that_names_a_change_or_lock_twice_is_refused() {
    let p = spawn_protected("24h").await;
    let pending = p.propose("alice", "prod", "network").await;
    let approved = p.approved("network").await;
    let main = p.issuer.token("main", |_| {});
    for query in [
        format!("change={pending}&change={approved}"),
        format!("change={approved}&change={pending}"),
    ] {
        let r = p
            .pipeline(&main)
            .lock(format!("prod/network?{query}"))
            .id("L")
            .send()
            .await;
        let text = sentence(r, StatusCode::BAD_REQUEST).await;
        assert!(text.contains("`change` more than once"), "{text}");
    }
    assert_eq!(held(&p, "network").await, None);

    let path = format!("prod/network?change={approved}");
    assert_status(
        &p.pipeline(&main).lock(&path).id("L").send().await,
        StatusCode::OK,
    );
    let before = snapshot(&p, "network").await;
    let r = p
        .pipeline(&main)
        .post(format!("{path}&ID=L&ID=X"), state_doc(1, "P", ""))
        .send()
        .await;
    let text = sentence(r, StatusCode::BAD_REQUEST).await;
    assert!(text.contains("`ID` more than once"), "{text}");
    let r = rollback(
        &p,
        &main,
        &format!("rollback_to=1&change={approved}&change={pending}"),
    )
    .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn put_is_judged_as_post_and_other_methods_are_refused() {
    let p = spawn_protected("24h").await;
    let (_, main, path) = apply_under_way(&p, "MAIN").await;
    let before = snapshot(&p, "network").await;
    let feature = p.issuer.token("feature-x", |_| {});
    let put = p
        .pipeline(&feature)
        .request("PUT", format!("{path}&ID=MAIN"))
        .body(state_doc(1, "X", ""))
        .send()
        .await;
    assert_status(&put, StatusCode::FORBIDDEN);
    let put =
        p.t.as_("ci-prod")
            .request("PUT", "prod/network?ID=MAIN")
            .body(state_doc(1, "X", ""))
            .send()
            .await;
    assert_status(&put, StatusCode::FORBIDDEN);
    for method in ["PATCH", "lock", "unlock", "HEAD", "OPTIONS", "PROPFIND"] {
        let r = p
            .pipeline(&main)
            .request(method, format!("{path}&ID=MAIN"))
            .body(state_doc(1, "X", ""))
            .send()
            .await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method}");
    }
    assert_eq!(snapshot(&p, "network").await, before);
    let put = p
        .pipeline(&main)
        .request("PUT", format!("{path}&ID=MAIN"))
        .body(state_doc(1, "P", ""))
        .send()
        .await;
    assert_status(&put, StatusCode::OK);
    let versions = p.t.versions("prod", "network").await;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].change_number, Some(1));
}

#[tokio::test]
async fn one_principals_break_glass_is_not_anothers() {
    let p = spawn_protected("24h").await;
    p.client("pat")
        .open_breakglass("prod", "database is down", Some("1h"))
        .await
        .unwrap();
    let before = snapshot(&p, "network").await;
    // quinn is of pat's team, the owner, but not of breakglass.allowed; bob merely reads.
    for who in ["quinn", "bob"] {
        let r = p.t.as_(who).lock("prod/network").id("Q").send().await;
        let text = refusal(r).await;
        assert!(
            text.contains(&format!("user:{who} may not write prod")),
            "{text}"
        );
        let r =
            p.t.as_(who)
                .post("prod/network", state_doc(1, "Q", ""))
                .send()
                .await;
        assert_status(&r, StatusCode::FORBIDDEN);
    }
    let main = p.issuer.token("main", |_| {});
    let r = p
        .pipeline(&main)
        .post("prod/network", state_doc(1, "Q", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&p, "network").await, before);

    // Under pat's lock, taken under pat's grant, nobody else writes.
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("BG").send().await,
        StatusCode::OK,
    );
    let before = snapshot(&p, "network").await;
    for who in ["quinn", "bob"] {
        let r =
            p.t.as_(who)
                .post("prod/network", state_doc(1, "Q", ""))
                .lock_id("BG")
                .send()
                .await;
        assert_status(&r, StatusCode::FORBIDDEN);
    }
    let r = p
        .pipeline(&main)
        .post("prod/network?ID=BG", state_doc(1, "Q", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::LOCKED);
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn a_break_glass_lock_writes_nothing_once_its_grant_is_closed() {
    let p = spawn_protected("24h").await;
    let pat = p.client("pat");
    let grant = pat
        .open_breakglass("prod", "database is down", Some("1h"))
        .await
        .unwrap();
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("BG").send().await,
        StatusCode::OK,
    );
    pat.close_breakglass(&grant.id).await.unwrap();
    let before = snapshot(&p, "network").await;
    let r =
        p.t.as_("pat")
            .post("prod/network", state_doc(1, "P", ""))
            .lock_id("BG")
            .send()
            .await;
    let text = sentence(r, StatusCode::FORBIDDEN).await;
    assert!(text.contains("user:pat may not write prod"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);
    // Nor once it has expired on its own.
    exec_sql(
        p.t.dir.path(),
        "prod",
        "UPDATE breakglass SET closed_at = NULL, expires_at = '2020-01-01T00:00:00.000000Z'",
    )
    .await;
    let r =
        p.t.as_("pat")
            .post("prod/network", state_doc(1, "P", ""))
            .lock_id("BG")
            .send()
            .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn an_approval_expiring_during_the_apply_leaves_it_its_window_and_no_more() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    exec_sql(
        p.t.dir.path(),
        "prod",
        "UPDATE approvals SET expires_at = '2020-01-01T00:00:00.000000Z'",
    )
    .await;
    // A retried LOCK needs the grant again: the approval has expired.
    let text = refusal(p.pipeline(&main).lock(&path).id("L").send().await).await;
    assert!(text.contains("approvals expired"), "{text}");
    // The apply that began under a valid approval finishes within its apply window...
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);
    assert_status(
        &p.pipeline(&main).unlock(&path).id("L").send().await,
        StatusCode::OK,
    );
    let applied = p.client("pat").change(&change).await.unwrap();
    assert_eq!(applied.applied_version, Some(1));
    // ...and the change is used up.
    let before = snapshot(&p, "network").await;
    let text = refusal(p.pipeline(&main).lock(&path).id("L2").send().await).await;
    assert!(text.contains("was already applied"), "{text}");
    let r = p
        .pipeline(&main)
        .post(&path, state_doc(2, "P", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn a_change_used_by_a_delete_is_used_up() {
    let issuer = Issuer::new();
    let config = protected_config(&issuer.jwks_path(), "24h").replacen(
        "pipeline { branches = [\"main\"] }",
        "pipeline { branches = [\"main\"] }\n  delete = [\"service:ci-prod\"]",
        1,
    );
    let p = Protected {
        t: spawn_app_with(&config).await,
        issuer,
    };
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    p.ci_apply(&first, &main, "L1", state_doc(1, "P", "")).await;

    let other_state = p.approved("database").await;
    let second = p.approved("network").await;
    let before = snapshot(&p, "network").await;
    let r = p
        .pipeline(&main)
        .delete(format!("prod/network?change={other_state}"))
        .send()
        .await;
    let text = sentence(r, StatusCode::FORBIDDEN).await;
    assert!(
        text.contains("is for state database, not network"),
        "{text}"
    );
    let feature = p.issuer.token("feature-x", |_| {});
    let r = p
        .pipeline(&feature)
        .delete(format!("prod/network?change={second}"))
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let r = p
        .pipeline(&main)
        .delete(format!("prod/network?change={first}"))
        .send()
        .await;
    let text = sentence(r, StatusCode::FORBIDDEN).await;
    assert!(text.contains("was already applied"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);

    let path = format!("prod/network?change={second}");
    assert_status(
        &p.pipeline(&main).delete(&path).send().await,
        StatusCode::OK,
    );
    let deleted = p.client("pat").change(&second).await.unwrap();
    assert_eq!(
        (deleted.readiness.as_str(), deleted.applied_version),
        ("applied", Some(2))
    );
    let before = snapshot(&p, "network").await;
    // Used once: not for another delete, a lock, an unlocked write or a rollback.
    let r = p.pipeline(&main).delete(&path).send().await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let text = refusal(p.pipeline(&main).lock(&path).id("L2").send().await).await;
    assert!(text.contains("was already applied (version 2)"), "{text}");
    let r = p
        .pipeline(&main)
        .post(&path, state_doc(2, "Q", ""))
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let r = rollback(&p, &main, &format!("rollback_to=1&change={second}")).await;
    assert_status(&r, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn a_rollback_names_a_change_of_its_own_state_and_uses_it_once() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    p.ci_apply(&first, &main, "L1", state_doc(7, "P", "")).await;
    // The current version is a deletion (under break-glass).
    delete_under_breakglass(&p).await;
    let pat = p.client("pat");
    let other_state = p.approved("database").await;
    let staging = p.propose("alice", "staging", "network").await;
    pat.decide(&staging, "approve", None).await.unwrap();
    let change = p.approved("network").await;
    let before = snapshot(&p, "network").await;

    let r = rollback(&p, &main, &format!("rollback_to=1&change={other_state}")).await;
    let text = sentence(r, StatusCode::FORBIDDEN).await;
    assert!(
        text.contains("is for state database, not network"),
        "{text}"
    );
    let r = rollback(&p, &main, &format!("rollback_to=1&change={staging}")).await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let feature = p.issuer.token("feature-x", |_| {});
    let r = rollback(&p, &feature, &format!("rollback_to=1&change={change}")).await;
    assert_status(&r, StatusCode::FORBIDDEN);
    // To the deletion itself: nothing to write, and the change stays unused.
    let r = rollback(&p, &main, &format!("rollback_to=2&change={change}")).await;
    assert_status(&r, StatusCode::NOT_FOUND);
    assert_eq!(snapshot(&p, "network").await, before);

    let r = rollback(&p, &main, &format!("rollback_to=1&change={change}")).await;
    assert_status(&r, StatusCode::OK);
    let versions = p.t.versions("prod", "network").await;
    assert_eq!(
        (
            versions.len(),
            versions[2].serial,
            versions[2].change_number
        ),
        (3, Some(7), Some(3))
    );
    let used = p.client("pat").change(&change).await.unwrap();
    assert_eq!(used.applied_version, Some(3));
    let before = snapshot(&p, "network").await;
    let r = rollback(&p, &main, &format!("rollback_to=1&change={change}")).await;
    let text = sentence(r, StatusCode::FORBIDDEN).await;
    assert!(text.contains("was already applied (version 3)"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_locks_and_unlocked_writes_of_one_change_grant_one() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let change = p.approved("network").await;
    let path = format!("prod/network?change={change}");
    let ids: Vec<String> = (0..8).map(|i| format!("L{i}")).collect();
    let answers = futures_util::future::join_all(
        ids.iter()
            .map(|id| p.pipeline(&main).lock(&path).id(id).send()),
    )
    .await;
    let granted: Vec<&String> = ids
        .iter()
        .zip(&answers)
        .filter(|(_, r)| r.status() == StatusCode::OK)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(granted.len(), 1, "exactly one LOCK wins");
    assert!(answers
        .iter()
        .all(|r| [StatusCode::OK, StatusCode::LOCKED].contains(&r.status())));
    let winner = granted[0].clone();
    assert!(held(&p, "network")
        .await
        .unwrap()
        .starts_with(&format!("{winner} ")));
    assert_status(
        &p.pipeline(&main).unlock(&path).id(winner).send().await,
        StatusCode::OK,
    );

    // terraform -lock=false, eight times at once with one change: one version, once.
    let answers = futures_util::future::join_all((0..8).map(|i| {
        p.pipeline(&main)
            .post(&path, state_doc(i + 1, "P", ""))
            .send()
    }))
    .await;
    let ok = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "exactly one unlocked write uses the change");
    assert!(answers
        .iter()
        .all(|r| [StatusCode::OK, StatusCode::FORBIDDEN].contains(&r.status())));
    let versions = p.t.versions("prod", "network").await;
    assert_eq!(versions.len(), 1);
    let used = p.client("pat").change(&change).await.unwrap();
    assert_eq!(used.applied_version, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_racing_one_change_grant_it_once() {
    let p = spawn_protected("24h").await;
    let other = p.t.serve_process().await;
    let bases = [p.t.base(), other.base.clone()];
    let main = p.issuer.token("main", |_| {});
    let change = p.approved("network").await;
    let path = format!("prod/network?change={change}");
    let locks = futures_util::future::join_all((0..8).map(|i| {
        let body = lock_info(&format!("L{i}"), "OperationTypeApply").into_bytes();
        ci_on(&bases[i % 2], "LOCK", &path, &main, body)
    }))
    .await;
    assert_eq!(
        locks.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{locks:?}"
    );
    assert!(locks
        .iter()
        .all(|s| [StatusCode::OK, StatusCode::LOCKED].contains(s)));
    let winner = held(&p, "network").await.unwrap();
    let id = winner.split(' ').next().unwrap().to_string();
    assert_status(
        &p.pipeline(&main).unlock(&path).id(id).send().await,
        StatusCode::OK,
    );

    let writes = futures_util::future::join_all((0..8).map(|i| {
        ci_on(
            &bases[i % 2],
            "POST",
            &path,
            &main,
            state_doc(i as i64 + 1, "P", ""),
        )
    }))
    .await;
    assert_eq!(
        writes.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{writes:?}"
    );
    assert_eq!(p.t.versions("prod", "network").await.len(), 1);
    let used = p.client("pat").change(&change).await.unwrap();
    assert_eq!(used.applied_version, Some(1));
}

#[tokio::test]
async fn a_change_rejected_while_its_write_is_uploading_stores_nothing() {
    let p = spawn_protected("24h").await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    let before = snapshot(&p, "network").await;
    // The write's headers, with Expect: 100-continue: the server asks for the body only once it
    // has judged the request, so the rejection below comes after that first verdict.
    let body = state_doc(1, "P", "");
    let mut conn = tokio::net::TcpStream::connect(p.t.addr).await.unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("ci-prod:{main}"))
    };
    let head = format!(
        "POST /v1/state/{path}&ID=L HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 256];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    p.client("pat")
        .decide(&change, "reject", Some("not now"))
        .await
        .unwrap();
    conn.write_all(&body).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(
        answer.contains(&format!("change {change} was rejected")),
        "{answer}"
    );
    let after = snapshot(&p, "network").await;
    assert_eq!((after.0, after.1), (before.0, before.1));
    let rejected = p.client("pat").change(&change).await.unwrap();
    assert_eq!(
        (rejected.readiness.as_str(), rejected.applied_version),
        ("rejected", None)
    );
}

#[tokio::test]
async fn policy_explain_gives_the_servers_refusal_for_each_action() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    p.ci_apply(&first, &main, "L1", state_doc(1, "P", "")).await;
    let t = &p.t;
    let server = [
        (
            ["--principal", "pat", "--action", "state:delete"],
            sentence(
                t.as_("pat").delete("prod/network").send().await,
                StatusCode::FORBIDDEN,
            )
            .await,
        ),
        (
            ["--principal", "alice", "--action", "state:force-unlock"],
            sentence(
                t.as_("alice")
                    .request("UNLOCK", "prod/network")
                    .body(Vec::new())
                    .send()
                    .await,
                StatusCode::FORBIDDEN,
            )
            .await,
        ),
        (
            ["--principal", "alice", "--action", "state:rollback"],
            sentence(
                t.client
                    .post(format!(
                        "{}/v1/history/prod/network?rollback_to=1",
                        t.base()
                    ))
                    .basic_auth("alice", Some(t.token("alice")))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::FORBIDDEN,
            )
            .await,
        ),
        (
            ["--principal", "alice", "--action", "state:write"],
            sentence(
                t.as_("alice")
                    .post("prod/network", state_doc(2, "P", ""))
                    .send()
                    .await,
                StatusCode::FORBIDDEN,
            )
            .await,
        ),
    ];
    for (who, said) in server {
        let mut args = who.to_vec();
        args.extend(["--env", "prod", "--state", "network"]);
        let (code, text) = explain(t, &args).await;
        assert_eq!(code, Some(1), "{text}");
        assert!(
            text.contains(&format!("the refused caller reads: {said}\n")),
            "{text}\nthe server said: {said}"
        );
    }
    // The pipeline's unlocked write without a change.
    let said = sentence(
        p.pipeline(&main)
            .post("prod/network", state_doc(2, "P", ""))
            .send()
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let (code, text) = explain(
        t,
        &[
            "--principal",
            "ci-prod",
            "--action",
            "state:write",
            "--env",
            "prod",
            "--state",
            "network",
            "--branch",
            "main",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("the refused caller reads: {said}\n")),
        "{text}\n{said}"
    );
    assert_eq!(t.versions("prod", "network").await.len(), 1);
}

#[tokio::test]
async fn policy_explain_names_the_break_glass_grant_the_server_uses() {
    let p = spawn_protected("24h").await;
    let pat = p.client("pat");
    pat.open_breakglass("prod", "database is down", Some("1h"))
        .await
        .unwrap();
    pat.open_breakglass("prod", "and the network", Some("2h"))
        .await
        .unwrap();
    assert_status(
        &p.t.as_("pat").lock("prod/network").id("BG").send().await,
        StatusCode::OK,
    );
    let record = p.t.newest_audit("prod", |r| r.action == "state:lock").await;
    let (code, text) = explain(
        &p.t,
        &[
            "--principal",
            "pat",
            "--action",
            "state:lock",
            "--env",
            "prod",
            "--state",
            "network",
            "--operation",
            "OperationTypeApply",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("decided by: {}\n", record.policy.unwrap())),
        "{text}"
    );
    assert!(
        text.contains(&format!("note: {}\n", record.reason.unwrap())),
        "{text}"
    );
}

#[tokio::test]
async fn the_holder_relocking_for_another_change_is_refused() {
    let p = spawn_protected("24h").await;
    let (first, main, _) = apply_under_way(&p, "L").await;
    let second = p.approved("network").await;
    let before = snapshot(&p, "network").await;
    let other = format!("prod/network?change={second}");
    let text = refusal(p.pipeline(&main).lock(&other).id("L").send().await).await;
    assert!(text.starts_with("L held by service:ci-prod"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);
    // What is written under the lock is for the change it was taken for.
    let post = p
        .pipeline(&main)
        .post(&other, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);
    let versions = p.t.versions("prod", "network").await;
    assert_eq!(versions[0].change_number, Some(1));
    let write =
        p.t.newest_audit("prod", |r| r.action == "state:write")
            .await;
    assert_eq!(write.change.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn a_lock_whose_time_cannot_be_read_writes_nothing() {
    let p = spawn_protected("24h").await;
    let (_, main, path) = apply_under_way(&p, "L").await;
    exec_sql(
        p.t.dir.path(),
        "prod",
        "UPDATE locks SET created_at = 'yesterday'",
    )
    .await;
    let before = snapshot(&p, "network").await;
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L")
        .send()
        .await;
    let text = sentence(post, StatusCode::FORBIDDEN).await;
    assert!(text.contains("its apply window cannot be told"), "{text}");
    assert_eq!(snapshot(&p, "network").await, before);
}

#[tokio::test]
async fn a_change_whose_apply_holds_the_lock_is_used_by_nothing_else() {
    let p = spawn_protected("24h").await;
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    p.ci_apply(&first, &main, "L1", state_doc(1, "P", "")).await;
    let (change, main, path) = apply_under_way(&p, "L").await;
    let before = snapshot(&p, "network").await;
    // The very identity that holds the lock, naming its change, without the lock.
    let write = p
        .pipeline(&main)
        .post(&path, state_doc(2, "P", ""))
        .send()
        .await;
    assert_status(&write, StatusCode::LOCKED);
    let r = rollback(&p, &main, &format!("rollback_to=1&change={change}")).await;
    assert_status(&r, StatusCode::LOCKED);
    let grant = p
        .client("pat")
        .open_breakglass("prod", "state must go", Some("1h"))
        .await
        .unwrap();
    let r = p.t.as_("pat").delete("prod/network").send().await;
    assert_status(&r, StatusCode::LOCKED);
    p.client("pat").close_breakglass(&grant.id).await.unwrap();
    let after = snapshot(&p, "network").await;
    assert_eq!((after.0, after.1), (before.0, before.1));
    let unused = p.client("pat").change(&change).await.unwrap();
    assert_eq!(unused.readiness, "approved");
}
