//! The audit log over the API (`GET /v1/audit`): an environment's owner reads its records
//! (`audit:read`), filtered as the CLI filters them, a page at a time; anyone else is refused
//! with a sentence, and the refusal is recorded. `bulkhead audit log --server` reads it so.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn get(t: &TestApp, who: &str, query: &str) -> reqwest::Response {
    t.client
        .get(format!("{}/v1/audit{query}", t.base()))
        .bearer_auth(t.token(who))
        .send()
        .await
        .unwrap()
}

async fn page(t: &TestApp, who: &str, query: &str) -> Value {
    let resp = get(t, who, query).await;
    assert_status(&resp, StatusCode::OK);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reads_its_environments_log_page_by_page_and_others_are_refused() {
    let t = spawn_app().await;
    for i in 0..7 {
        let who = if i % 2 == 0 { "alice" } else { "bob" };
        assert_eq!(t.as_(who).get("dev/app").send().await.status(), 204);
    }
    assert_eq!(t.as_("pat").get("prod/net").send().await.status(), 204);

    // The owner (team app) of dev, a page of 3 at a time, the records in the chain's order.
    let want: Vec<String> = t
        .audit(Some("dev"))
        .await
        .into_iter()
        .filter(|r| r.action == "state:read")
        .map(|r| r.time)
        .collect();
    assert_eq!(want.len(), 7);
    let mut got = Vec::new();
    let mut after = String::new();
    loop {
        let p = page(
            &t,
            "alice",
            &format!("?env=dev&action=state:read&limit=3{after}"),
        )
        .await;
        let records = p["records"].as_array().unwrap();
        assert!(records.len() <= 3);
        got.extend(
            records
                .iter()
                .map(|r| r["time"].as_str().unwrap().to_string()),
        );
        if !p["more"].as_bool().unwrap() {
            break;
        }
        after = format!("&after={}", p["cursor"].as_str().unwrap());
    }
    assert_eq!(got, want);

    // Filters as the CLI's: a name the config knows is that principal.
    let bob = page(&t, "alice", "?env=dev&principal=bob&action=state:read").await;
    assert_eq!(bob["records"].as_array().unwrap().len(), 3);
    let newest = page(&t, "alice", "?env=dev&action=state:read&last=2").await;
    let newest: Vec<&str> = newest["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert_eq!(
        newest,
        want[5..].iter().map(String::as_str).collect::<Vec<_>>()
    );

    // Without an environment: only the chains the caller may read (dev, not prod).
    let all = page(&t, "alice", "?action=state:read").await;
    assert!(all["records"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["environment"] == "dev"));

    // A reader of prod who does not own it is refused, in words, and that is recorded.
    let refused = get(&t, "alice", "?env=prod").await;
    assert_status(&refused, StatusCode::FORBIDDEN);
    let sentence = refused.text().await.unwrap();
    assert!(
        sentence.contains("user:alice may not read the audit log of prod (owner: team:platform)"),
        "{sentence}"
    );
    let denied = t.last_audit("prod").await;
    assert_eq!(
        (denied.action.as_str(), denied.status),
        ("audit:read", Some(403))
    );
    // The server's own chain needs audit:read everywhere; eve may read no chain at all.
    assert_status(&get(&t, "pat", "?env=server").await, StatusCode::FORBIDDEN);
    let nothing = get(&t, "eve", "").await;
    assert_status(&nothing, StatusCode::FORBIDDEN);
    assert!(nothing
        .text()
        .await
        .unwrap()
        .contains("may not read the audit log of any environment"));

    // Bad input is a 400 with a sentence, never a 5xx.
    for (query, says) in [
        ("?env=dev&after=dev:x", "is not a cursor"),
        ("?env=dev&decision=maybe", "use allow, deny or error"),
        ("?env=dev&since=yesterday", "not an RFC 3339 time"),
        (
            "?env=dev&principal=carol",
            "no user or service is called `carol`",
        ),
        ("?env=dev&change=dev-01", "is not a change id"),
    ] {
        let resp = get(&t, "alice", query).await;
        assert_status(&resp, StatusCode::BAD_REQUEST);
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{query}: {text}");
    }
    assert_status(
        &get(&t, "alice", "?env=nowhere").await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_with_server_reads_the_log_over_the_api() {
    let t = spawn_app().await;
    assert_eq!(t.as_("bob").get("dev/app").send().await.status(), 204);
    let base = t.base();
    let out = t.cli(
        t.token("alice"),
        &[
            "audit",
            "log",
            "--server",
            &base,
            "--env",
            "dev",
            "--principal",
            "bob",
            "--action",
            "state:read",
            "--format",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["principal"], "user:bob");

    let refused = t.cli(
        t.token("alice"),
        &["audit", "log", "--server", &base, "--env", "prod"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("may not read the audit log of prod"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_follow_with_server_prints_new_records_as_they_are_written() {
    use tokio::io::AsyncBufReadExt;
    let t = spawn_app().await;
    assert_eq!(t.as_("alice").get("dev/before").send().await.status(), 204);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "audit",
            "log",
            "--server",
            &t.base(),
            "--env",
            "dev",
            "--action",
            "state:read",
            "--last",
            "1",
            "--follow",
            "--format",
            "json",
        ])
        .current_dir(t.dir.path())
        .env("BULKHEAD_TOKEN", t.token("alice"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The newest one first, then what is written while it follows.
    assert_eq!(crate::cli::next_record(&mut lines).await["state"], "before");
    assert_eq!(t.as_("bob").get("dev/after").send().await.status(), 204);
    let after = crate::cli::next_record(&mut lines).await;
    assert_eq!(
        (after["state"].as_str(), after["principal"].as_str()),
        (Some("after"), Some("user:bob"))
    );
    child.kill().await.unwrap();
    // Following was recorded once, as the request that opened it, not once per look.
    let opened = t
        .audit(Some("dev"))
        .await
        .into_iter()
        .filter(|r| r.action == "audit:read")
        .count();
    assert_eq!(opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_across_chains_lose_no_record_and_keep_time_order() {
    let t = spawn_app().await;
    // pat owns staging and prod: two chains, read together.
    for state in ["staging/a", "prod/b", "prod/c", "staging/d", "prod/e"] {
        assert_eq!(t.as_("pat").get(state).send().await.status(), 204);
    }
    let mut got = Vec::new();
    let mut after = String::new();
    for _ in 0..20 {
        let p = page(&t, "pat", &format!("?action=state:read&limit=2{after}")).await;
        got.extend(
            p["records"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["state"].as_str().unwrap().to_string()),
        );
        if !p["more"].as_bool().unwrap() {
            break;
        }
        after = format!("&after={}", p["cursor"].as_str().unwrap());
    }
    assert_eq!(got, ["a", "b", "c", "d", "e"]);
}
