//! `GET /metrics`: answers counted by environment, action, decision and status, locks and
//! pending changes read when scraped, for whoever may read an audit log; nobody else.

use reqwest::StatusCode;

use crate::helpers::*;

async fn scrape(t: &TestApp, who: Option<&str>) -> reqwest::Response {
    let req = t.client.get(format!("{}/metrics", t.base()));
    let req = match who {
        Some(who) => req.bearer_auth(t.token(who)),
        None => req,
    };
    req.send().await.unwrap()
}

#[tokio::test]
async fn metrics_count_answers_and_show_locks_for_audit_readers_only() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("L1").send().await,
        StatusCode::OK,
    );
    let refused = t.as_("alice").lock("prod/net").id("L2").send().await;
    assert_status(&refused, StatusCode::LOCKED);
    // A name the config does not know is one label, whatever the client sends.
    for name in ["nowhere-1", "nowhere-2"] {
        t.as_("alice").get(format!("{name}/x")).send().await;
    }

    let resp = scrape(&t, Some("alice")).await;
    assert_status(&resp, StatusCode::OK);
    let text = resp.text().await.unwrap();
    for want in [
        r#"bulkhead_requests_total{action="state:lock",decision="allow",environment="dev",status="200"} 1"#,
        r#"bulkhead_requests_total{action="state:lock",decision="deny",environment="prod",status="423"} 1"#,
        r#"bulkhead_locks_held{environment="dev"} 1"#,
        r#"bulkhead_locks_held{environment="prod"} 0"#,
        r#"bulkhead_changes_pending{environment="prod"} 0"#,
        "bulkhead_request_seconds_bucket",
        // The refused LOCK's record is appended alone, by a group commit of prod's chain.
        r#"bulkhead_group_commit_records_total{chain="prod"} 1"#,
        r#"bulkhead_group_commits_total{chain="prod"} 1"#,
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }
    assert!(!text.contains("nowhere"), "{text}");
    assert!(text.contains(r#"environment="other""#), "{text}");

    // Without credentials, or without audit:read anywhere: refused, in words.
    assert_status(&scrape(&t, None).await, StatusCode::UNAUTHORIZED);
    let eve = scrape(&t, Some("eve")).await;
    assert_status(&eve, StatusCode::FORBIDDEN);
    assert!(eve
        .text()
        .await
        .unwrap()
        .contains("may not read the server's metrics"));
}

#[tokio::test]
async fn metrics_listen_serves_metrics_without_credentials_and_nothing_else() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let t = spawn_app_with(&config_with_server(&format!(
        "metrics_listen = \"127.0.0.1:{port}\""
    )))
    .await;
    assert_status(
        &t.as_("alice").lock("dev/app").id("L1").send().await,
        StatusCode::OK,
    );
    let open = format!("http://127.0.0.1:{port}");
    let resp = t
        .client
        .get(format!("{open}/metrics"))
        .send()
        .await
        .unwrap();
    assert_status(&resp, StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#"bulkhead_locks_held{environment="dev"} 1"#),
        "{text}"
    );
    // Nothing but /metrics there; and the main address still asks for credentials.
    for path in ["/v1/status", "/v1/state/dev/app", "/ui"] {
        let resp = t.client.get(format!("{open}{path}")).send().await.unwrap();
        assert_status(&resp, StatusCode::NOT_FOUND);
    }
    assert_status(&scrape(&t, None).await, StatusCode::UNAUTHORIZED);
}
