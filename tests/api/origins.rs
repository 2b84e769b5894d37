//! Where a request comes from: the client certificate a service must present, the networks an
//! environment is written or read from, and the client address behind a trusted proxy. Every
//! refusal leaves the state as it was.

use reqwest::StatusCode;

use crate::helpers::*;

/// [`CONFIG`] with `ci-prod` bound to the runner's certificate.
pub fn certified(config: String) -> String {
    config.replace(
        "service \"ci-prod\" {}",
        "service \"ci-prod\" {\n  certificate { subject = \"CN=runner-prod, O=acme\" }\n}",
    )
}

/// [`CONFIG`] with `prod` written only from 10.20.0.0/16.
fn prod_written_from_runners(config: &str) -> String {
    config.replace(
        "  write = [\"service:ci-prod\"]\n}",
        "  write = [\"service:ci-prod\"]\n  write_from = [\"10.20.0.0/16\"]\n}",
    )
}

/// The pipeline's write of version `serial` of prod/network, sent as `from` builds it, which
/// must be answered `status`; the answer's body.
async fn pipeline_writes(from: Requester<'_>, serial: i64, status: StatusCode) -> String {
    let r = from
        .post("prod/network", state_doc(serial, "L", ""))
        .send()
        .await;
    assert_status(&r, status);
    r.text().await.unwrap()
}

#[tokio::test]
async fn a_service_bound_to_a_certificate_is_refused_without_it_and_nothing_changes() {
    let runners = Pki::new("runners CA");
    let other = Pki::new("another CA");
    let s = spawn_tls(&runners, certified).await;
    let t = &s.t;
    let bare = runners.client_of_server(None);
    let laptop = runners.client_of_server(Some(&runners.client("laptop", "acme")));
    let runner = runners.client_of_server(Some(&runners.client("runner-prod", "acme")));

    // The token alone: refused, with what is missing.
    let body = pipeline_writes(
        t.as_("ci-prod").over(&s.base, &bare),
        1,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(
        body.contains("service:ci-prod may not write prod without its client certificate")
            && body.contains("requires one with subject CN=runner-prod,O=acme")
            && body.contains("came with none")
            && body.contains("client_certificate_pem"),
        "{body}"
    );
    // A LOCK is answered so that terraform shows the sentence.
    let r = t
        .as_("ci-prod")
        .over(&s.base, &bare)
        .lock("prod/network")
        .id("L1")
        .send()
        .await;
    assert_status(&r, StatusCode::LOCKED);
    let body = r.text().await.unwrap();
    assert!(body.contains("without its client certificate"), "{body}");
    // Reads too: the certificate is part of who the service is.
    let r = t
        .as_("ci-prod")
        .over(&s.base, &bare)
        .get("prod/network")
        .send()
        .await;
    assert_status(&r, StatusCode::FORBIDDEN);
    // A certificate of the right authority with another subject: named in the refusal.
    let body = pipeline_writes(
        t.as_("ci-prod").over(&s.base, &laptop),
        1,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body.contains("came with one of CN=laptop,O=acme"), "{body}");
    let refused = t.newest_audit("prod", |r| r.action == "state:write").await;
    assert_eq!(refused.certificate.as_deref(), Some("CN=laptop,O=acme"));
    assert_eq!(
        refused.policy.as_deref(),
        Some("service:ci-prod.certificate")
    );
    // A certificate of another authority does not get past the handshake.
    let stranger = runners.client_of_server(Some(&other.client("runner-prod", "acme")));
    let r = stranger
        .post(format!("{}/v1/state/prod/network", s.base))
        .basic_auth("ci-prod", Some(t.token("ci-prod")))
        .body(state_doc(1, "L", ""))
        .send()
        .await;
    assert!(
        r.is_err(),
        "a certificate of another CA was accepted: {r:?}"
    );
    assert!(t.versions("prod", "network").await.is_empty());

    // The runner's certificate and the token: written, and the certificate recorded.
    pipeline_writes(t.as_("ci-prod").over(&s.base, &runner), 1, StatusCode::OK).await;
    assert_eq!(t.versions("prod", "network").await.len(), 1);
    let written = t.newest_audit("prod", |r| r.action == "state:write").await;
    assert_eq!(
        written.certificate.as_deref(),
        Some("CN=runner-prod,O=acme")
    );
    // The certificate without the token proves nothing.
    let r = runner
        .get(format!("{}/v1/state/prod/network", s.base))
        .send()
        .await
        .unwrap();
    assert_status(&r, StatusCode::UNAUTHORIZED);
    // People need no certificate where the server's client_auth is optional.
    let r = t
        .as_("alice")
        .over(&s.base, &bare)
        .get("prod/network")
        .send()
        .await;
    assert_status(&r, StatusCode::OK);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn a_server_that_requires_certificates_refuses_connections_without_one() {
    let runners = Pki::new("runners CA");
    let s = spawn_tls(&runners, |c| {
        c.replace(
            "client_ca_file",
            "client_auth = \"required\"\n    client_ca_file",
        )
    })
    .await;
    let r = runners
        .client_of_server(None)
        .get(format!("{}/v1/state/dev/app", s.base))
        .basic_auth("alice", Some(s.t.token("alice")))
        .send()
        .await;
    assert!(r.is_err(), "a connection without a certificate was served");
    let alice = runners.client_of_server(Some(&runners.client("alice", "acme")));
    let r =
        s.t.as_("alice")
            .over(&s.base, &alice)
            .get("dev/app")
            .send()
            .await;
    assert_status(&r, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn writes_come_only_from_write_from_and_a_forged_forwarded_for_is_ignored() {
    let t = spawn_app_with(&prod_written_from_runners(CONFIG)).await;
    let body = pipeline_writes(t.as_("ci-prod"), 1, StatusCode::FORBIDDEN).await;
    assert!(
        body.contains("service:ci-prod may not write prod from 127.0.0.1")
            && body.contains("only from 10.20.0.0/16 (write_from)"),
        "{body}"
    );
    // The server trusts no proxy: a client naming the runners' network is not believed.
    pipeline_writes(
        t.as_("ci-prod").forwarded_for("10.20.0.7"),
        1,
        StatusCode::FORBIDDEN,
    )
    .await;
    let refused = t.newest_audit("prod", |r| r.action == "state:write").await;
    assert_eq!(refused.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(refused.peer, None);
    assert_eq!(refused.policy.as_deref(), Some("prod.write_from"));
    let r = t
        .as_("ci-prod")
        .forwarded_for("10.20.0.7")
        .lock("prod/network")
        .id("L1")
        .send()
        .await;
    assert_status(&r, StatusCode::LOCKED);
    assert!(t.versions("prod", "network").await.is_empty());
    // Reading, and a reader's plan, are not writes.
    let r = t.as_("alice").get("prod/network").send().await;
    assert_status(&r, StatusCode::NO_CONTENT);
    let r = t
        .as_("alice")
        .lock("prod/network")
        .id("PLAN")
        .operation("OperationTypePlan")
        .send()
        .await;
    assert_status(&r, StatusCode::OK);
    // Someone who may not write at all is told that, not that the network is wrong.
    let r = t
        .as_("alice")
        .post("prod/network", state_doc(1, "L", ""))
        .lock_id("PLAN")
        .send()
        .await;
    let body = r.text().await.unwrap();
    assert!(!body.contains("write_from"), "{body}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client_and_both_are_kept() {
    let config =
        prod_written_from_runners(&config_with_server("trusted_proxies = [\"127.0.0.1\"]"))
            .replace(
                "  max_state_size = \"64KiB\"",
                "  max_state_size = \"64KiB\"\n  read_from = [\"10.30.0.0/16\", \"10.20.0.0/16\"]",
            );
    let t = spawn_app_with(&config).await;
    pipeline_writes(
        t.as_("ci-prod").forwarded_for("10.20.0.7"),
        1,
        StatusCode::OK,
    )
    .await;
    let written = t.newest_audit("prod", |r| r.action == "state:write").await;
    assert_eq!(written.source.as_deref(), Some("10.20.0.7"));
    assert_eq!(written.peer.as_deref(), Some("127.0.0.1"));
    let log = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["audit", "log", "--config", "bulkhead.hcl", "--env", "prod"])
        .current_dir(t.dir.path())
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&log.stdout);
    assert!(shown.contains("from 10.20.0.7 via 127.0.0.1"), "{shown}");
    // What the client wrote left of the proxy's entry is not believed.
    let body = pipeline_writes(
        t.as_("ci-prod").forwarded_for("10.20.0.7, 198.51.100.4"),
        2,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert!(body.contains("from 198.51.100.4"), "{body}");
    // The proxy asking for itself is not in the runners' network.
    pipeline_writes(t.as_("ci-prod"), 2, StatusCode::FORBIDDEN).await;
    assert_eq!(t.versions("prod", "network").await.len(), 1);
    // read_from bars everything, reads included.
    let r = t.as_("alice").get("dev/app").send().await;
    assert_status(&r, StatusCode::FORBIDDEN);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("requests are answered only from 10.30.0.0/16, 10.20.0.0/16 (read_from)"),
        "{body}"
    );
    let r = t
        .as_("alice")
        .forwarded_for("10.30.1.1")
        .get("dev/app")
        .send()
        .await;
    assert_status(&r, StatusCode::NO_CONTENT);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn a_revoked_runner_certificate_is_refused_at_the_handshake() {
    let runners = Pki::new("runners CA");
    let lists = tempfile::tempdir().unwrap();
    let crl = lists.path().join("runners.crl");
    std::fs::write(&crl, runners.crl(&[7])).unwrap();
    let s = spawn_tls(&runners, |c| {
        certified(c.replace(
            "client_ca_file",
            &format!(
                "client_crl_file = \"{}\"\n    client_ca_file",
                crl.display()
            ),
        ))
    })
    .await;
    let t = &s.t;
    // The runner whose key leaked, and its replacement.
    let leaked = runners.numbered_client("runner-prod", "acme", 7);
    let renewed = runners.numbered_client("runner-prod", "acme", 8);
    let r = runners
        .client_of_server(Some(&leaked))
        .post(format!("{}/v1/state/prod/network", s.base))
        .basic_auth("ci-prod", Some(t.token("ci-prod")))
        .body(state_doc(1, "L", ""))
        .send()
        .await;
    assert!(r.is_err(), "a revoked certificate was accepted: {r:?}");
    assert!(t.versions("prod", "network").await.is_empty());
    let client = runners.client_of_server(Some(&renewed));
    pipeline_writes(t.as_("ci-prod").over(&s.base, &client), 1, StatusCode::OK).await;
}
