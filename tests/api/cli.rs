//! The real binary, in a fresh directory per test: config errors, tokens, the server's start
//! line and logs, and audit verification against a tampered database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tokio::io::AsyncBufReadExt;

use crate::helpers::*;

pub(crate) fn bulkhead(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .current_dir(dir)
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("BULKHEAD_ADDR")
        .output()
        .expect("run bulkhead")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn with_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulkhead.hcl");
    std::fs::write(&path, with_test_storage(text)).unwrap();
    (dir, path)
}

#[test]
fn an_invalid_config_stops_the_server_with_exit_2_naming_file_and_line() {
    let (dir, _) = with_config(&CONFIG.replace(
        r#"write = ["service:ci-prod"]"#,
        r#"write = ["service:ci-production"]"#,
    ));
    let out = bulkhead(dir.path(), &["serve", "--config", "bulkhead.hcl"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let line = std::fs::read_to_string(dir.path().join("bulkhead.hcl"))
        .unwrap()
        .lines()
        .position(|l| l.contains(r#"write = ["service:ci-production"]"#))
        .unwrap()
        + 1;
    let want = format!("bulkhead.hcl:{line}: environment \"prod\": unknown principal service:ci-production in `write`");
    assert!(stderr(&out).contains(&want), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
}

#[test]
fn unusable_tls_files_stop_the_server_with_exit_2_naming_the_file() {
    let pki = Pki::new("runners CA");
    let server = pki.server();
    let (dir, _) = with_config(&CONFIG.replace(
        "data_dir = \"data\"",
        "data_dir = \"data\"\n  tls {\n    cert_file = \"server.pem\"\n    key_file = \"server.key\"\n    client_ca_file = \"runners-ca.pem\"\n  }",
    ));
    std::fs::write(dir.path().join("server.pem"), &server.cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
    // The CA file holds a key, not a certificate.
    std::fs::write(dir.path().join("runners-ca.pem"), &server.key).unwrap();
    let out = bulkhead(
        dir.path(),
        &[
            "serve",
            "--config",
            "bulkhead.hcl",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("runners-ca.pem: it holds no PEM certificate"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[test]
fn an_invalid_custom_policy_stops_the_server_with_exit_2() {
    let (dir, _) = with_config(&format!("policies = [\"extra.cedar\"]\n{CONFIG}"));
    std::fs::write(
        dir.path().join("extra.cedar"),
        "permit(principal, action == Bulkhead::Action::\"state:fly\", resource);",
    )
    .unwrap();
    let out = bulkhead(dir.path(), &["serve", "--config", "bulkhead.hcl"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("extra.cedar"), "{}", stderr(&out));
}

#[test]
fn token_create_prints_the_token_alone_and_stores_only_its_hash() {
    let (dir, _) = with_config(CONFIG);
    let out = bulkhead(
        dir.path(),
        &["token", "create", "alice", "--config", "bulkhead.hcl"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let token = printed.strip_suffix('\n').unwrap();
    assert!(!token.contains('\n'));
    let (id, secret) = token.strip_prefix("bh_").unwrap().split_once('_').unwrap();
    assert_eq!((id.len(), secret.len()), (16, 64));

    let stored = stored_tokens(dir.path());
    for bytes in &stored {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in clear"
        );
    }

    let list = bulkhead(dir.path(), &["token", "list", "--config", "bulkhead.hcl"]);
    assert!(stdout(&list).contains(id) && stdout(&list).contains("user:alice"));
    assert!(!stdout(&list).contains(secret));

    let unknown = bulkhead(
        dir.path(),
        &["token", "create", "mallory", "--config", "bulkhead.hcl"],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stdout(&unknown).is_empty());

    assert!(bulkhead(
        dir.path(),
        &["token", "revoke", id, "--config", "bulkhead.hcl"]
    )
    .status
    .success());
    let again = bulkhead(
        dir.path(),
        &["token", "revoke", id, "--config", "bulkhead.hcl"],
    );
    assert_eq!(again.status.code(), Some(1));
    let list = bulkhead(
        dir.path(),
        &[
            "token",
            "list",
            "--config",
            "bulkhead.hcl",
            "--format",
            "json",
        ],
    );
    let tokens: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert!(tokens[0]["revoked_at"].is_string());
}

#[tokio::test]
async fn serve_announces_its_address_answers_and_never_logs_tokens() {
    let (dir, _) = with_config(CONFIG);
    let token = stdout(&bulkhead(
        dir.path(),
        &["token", "create", "alice", "--config", "bulkhead.hcl"],
    ));
    let token = token.trim();
    let Served {
        mut child,
        base,
        log,
    } = serve_process(dir.path()).await;

    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let url = format!("{base}/v1/state/dev/app");
    let r = client
        .post(&url)
        .basic_auth("alice", Some(token))
        .body(state_doc(1, "L", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(&url)
        .basic_auth("alice", Some("bh_wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("state:write"), "{log}");
    assert!(
        !log.contains(token) && !log.contains("bh_wrong"),
        "a token reached the log:\n{log}"
    );
    assert!(
        !log.contains("\"lineage\""),
        "state content reached the log:\n{log}"
    );
}

#[tokio::test]
async fn audit_verify_detects_an_edited_record_and_audit_log_filters() {
    let t = spawn_app().await;
    assert_eq!(
        t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await
            .status(),
        200
    );
    assert_eq!(
        t.as_("alice")
            .lock("prod/net")
            .id("X")
            .send()
            .await
            .status(),
        423
    );
    let dir = t.dir.path();

    let ok = bulkhead(dir, &["audit", "verify", "--config", "bulkhead.hcl"]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(
        stdout(&ok).contains("prod: 1 records, chain intact"),
        "{}",
        stdout(&ok)
    );

    let denied = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--decision",
            "deny",
            "--format",
            "json",
        ],
    );
    let lines: Vec<serde_json::Value> = stdout(&denied)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["principal"], "user:alice");
    assert_eq!(lines[0]["environment"], "prod");
    let by_env = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--env",
            "dev",
            "--action",
            "state:write",
        ],
    );
    assert_eq!(stdout(&by_env).lines().count(), 1);
    let recent = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--since",
            "1h",
            "--state",
            "net",
            "--format",
            "json",
        ],
    );
    assert_eq!(stdout(&recent).lines().count(), 1, "{}", stdout(&recent));
    let future = bulkhead(
        dir,
        &["audit", "log", "--config", "bulkhead.hcl", "--until", "1h"],
    );
    assert_eq!(stdout(&future).lines().count(), 0);
    let bad = bulkhead(
        dir,
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--since",
            "yesterday",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));

    // Someone with access to the file rewrites the refusal as an allow.
    allow_audit_tampering(dir, "prod").await;
    exec_sql(
        dir,
        "prod",
        "UPDATE audit SET record = replace(record, '\"deny\"', '\"allow\"') WHERE seq = 1",
    )
    .await;
    let broken = bulkhead(dir, &["audit", "verify", "--config", "bulkhead.hcl"]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stdout(&broken).contains("prod: BROKEN at record 1: its MAC does not match its content"),
        "{}",
        stdout(&broken)
    );
    assert!(
        stdout(&broken).contains("dev: "),
        "the other chains are still reported"
    );
}

#[tokio::test]
async fn audit_verify_detects_deleted_records() {
    let t = spawn_app().await;
    for serial in 1..=3 {
        assert_eq!(
            t.as_("alice")
                .post("dev/app", state_doc(serial, "L", ""))
                .send()
                .await
                .status(),
            200
        );
    }
    allow_audit_tampering(t.dir.path(), "dev").await;
    exec_sql(t.dir.path(), "dev", "DELETE FROM audit WHERE seq = 3").await;
    let out = bulkhead(
        t.dir.path(),
        &["audit", "verify", "--config", "bulkhead.hcl"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("dev: BROKEN"), "{}", stdout(&out));
}

#[test]
fn help_teaches() {
    let dir = tempfile::tempdir().unwrap();
    let out = bulkhead(dir.path(), &["token", "create", "--help"]);
    assert!(stdout(&out).contains("TF_HTTP_PASSWORD"));
    let out = bulkhead(dir.path(), &["serve", "--config", "missing.hcl"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing.hcl: cannot read the config file"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policy_explain_names_the_deciding_policy() {
    let (dir, _) = with_config(CONFIG);
    let allow = bulkhead(
        dir.path(),
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
        ],
    );
    assert!(allow.status.success(), "{}", stderr(&allow));
    assert!(
        stdout(&allow).contains("decided by: prod.write.service:ci-prod"),
        "{}",
        stdout(&allow)
    );
    let deny = bulkhead(
        dir.path(),
        &[
            "policy",
            "explain",
            "--config",
            "bulkhead.hcl",
            "--principal",
            "alice",
            "--action",
            "state:write",
            "--env",
            "prod",
        ],
    );
    assert_eq!(deny.status.code(), Some(1));
    assert!(stdout(&deny).contains("default deny"));
    assert!(stdout(&deny).contains("user:alice may not write prod (owner: team:platform)"));
    assert!(
        stdout(&deny).contains("what would change the answer:\n  - being one of service:ci-prod"),
        "{}",
        stdout(&deny)
    );
    let schema = bulkhead(dir.path(), &["policy", "schema"]);
    assert!(stdout(&schema).contains("namespace Bulkhead"));
}

#[test]
fn policy_matrix_lists_who_may_do_what_where() {
    let (dir, _) = with_config(CONFIG);
    let out = bulkhead(
        dir.path(),
        &[
            "policy",
            "matrix",
            "--config",
            "bulkhead.hcl",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        m["prod"]["state:write"],
        serde_json::json!(["service:ci-prod"])
    );
    assert_eq!(
        m["dev"]["state:force-write"],
        serde_json::json!(["user:pat"])
    );
    assert!(m["prod"]["state:read"]
        .as_array()
        .unwrap()
        .contains(&"user:alice".into()));
}

#[test]
fn policy_explain_and_matrix_show_networks_and_certificates() {
    let config = CONFIG
        .replace(
            "  write = [\"service:ci-prod\"]\n}",
            "  write = [\"service:ci-prod\"]\n  write_from = [\"10.20.0.0/16\"]\n}",
        )
        .replace(
            "service \"ci-prod\" {}",
            "service \"ci-prod\" {\n  certificate { subject = \"CN=runner-prod,O=acme\" }\n}",
        )
        .replace(
            "data_dir = \"data\"",
            "data_dir = \"data\"\n  tls {\n    cert_file = \"c.pem\"\n    key_file = \"k.pem\"\n    client_ca_file = \"ca.pem\"\n  }",
        );
    let (dir, _) = with_config(&config);
    let explain = |more: &[&str]| {
        let mut args = vec![
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
        ];
        args.extend(more);
        bulkhead(dir.path(), &args)
    };
    // By default: from where writes may come, with the certificate the service requires.
    let allow = explain(&[]);
    assert!(allow.status.success(), "{}", stdout(&allow));
    let shown = stdout(&allow);
    assert!(
        shown.contains("asked from: 10.20.0.0")
            && shown.contains("with client certificate: CN=runner-prod,O=acme"),
        "{shown}"
    );
    let outside = explain(&["--from", "203.0.113.9"]);
    assert_eq!(outside.status.code(), Some(1));
    let shown = stdout(&outside);
    assert!(
        shown.contains("decided by: prod.write_from")
            && shown.contains("service:ci-prod may not write prod from 203.0.113.9")
            && shown.contains("asking from 10.20.0.0/16 (write_from)"),
        "{shown}"
    );
    let laptop = explain(&["--certificate-subject", "CN=laptop,O=acme"]);
    assert_eq!(laptop.status.code(), Some(1));
    let shown = stdout(&laptop);
    assert!(
        shown.contains("decided by: service:ci-prod.certificate")
            && shown.contains("came with one of CN=laptop,O=acme"),
        "{shown}"
    );
    let bad = explain(&["--certificate-subject", "laptop"]);
    assert_eq!(bad.status.code(), Some(2));
    let matrix = bulkhead(
        dir.path(),
        &["policy", "matrix", "--config", "bulkhead.hcl"],
    );
    let shown = stdout(&matrix);
    assert!(
        shown.contains("(states are changed only from 10.20.0.0/16 by write_from)")
            && shown.contains("service:ci-prod is refused everywhere without a client certificate with subject CN=runner-prod,O=acme"),
        "{shown}"
    );
    let json = bulkhead(
        dir.path(),
        &[
            "policy",
            "matrix",
            "--config",
            "bulkhead.hcl",
            "--format",
            "json",
        ],
    );
    let m: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(
        m["prod"]["state:write"],
        serde_json::json!(["service:ci-prod"])
    );
    assert_eq!(m["prod"]["write_from"], serde_json::json!(["10.20.0.0/16"]));
}

#[test]
fn policy_matrix_and_explain_show_a_personal_template_once_and_decide_its_environments() {
    let (dir, _) = with_config(&crate::personal::sandbox_config());
    let matrix = |format: &str| {
        let out = bulkhead(
            dir.path(),
            &[
                "policy",
                "matrix",
                "--config",
                "bulkhead.hcl",
                "--format",
                format,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let m: serde_json::Value = serde_json::from_str(&matrix("json")).unwrap();
    let sandbox = &m["sandbox-<member>"];
    assert_eq!(sandbox["state:write"], serde_json::json!(["<member>"]));
    assert_eq!(
        sandbox["state:read"],
        serde_json::json!(["<member>", "user:pat"])
    );
    assert!(m.get("sandbox-alice").is_none() && m.get("sandbox-bob").is_none());
    let human = matrix("human");
    assert!(
        human.contains("sandbox-<member> (personal: one for each of 2 members, owner <member>)"),
        "{human}"
    );
    let explain = |who: &str| {
        bulkhead(
            dir.path(),
            &[
                "policy",
                "explain",
                "--config",
                "bulkhead.hcl",
                "--principal",
                who,
                "--action",
                "state:write",
                "--env",
                "sandbox-alice",
            ],
        )
    };
    let allowed = explain("alice");
    assert_eq!(allowed.status.code(), Some(0), "{}", stdout(&allowed));
    assert!(
        stdout(&allowed).contains("sandbox.member"),
        "{}",
        stdout(&allowed)
    );
    let denied = explain("bob");
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stdout(&denied).contains("user:bob may not write sandbox-alice (owner: user:alice)"),
        "{}",
        stdout(&denied)
    );
}

#[tokio::test]
async fn audit_log_follow_prints_new_records_as_they_are_written() {
    let t = spawn_app().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args([
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--env",
            "dev",
            "--follow",
            "--format",
            "json",
        ])
        .current_dir(t.dir.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(t.as_("alice").get("dev/first").send().await.status(), 204);
    assert_eq!(next_record(&mut lines).await["state"], "first");
    // Written after the follower printed the first: only following can show it.
    assert_eq!(t.as_("alice").get("dev/second").send().await.status(), 204);
    let second = next_record(&mut lines).await;
    assert_eq!(
        (second["state"].as_str(), second["action"].as_str()),
        (Some("second"), Some("state:read"))
    );
    child.kill().await.unwrap();
}

/// The next JSON line of a follower; bounded, since it polls every second.
pub async fn next_record(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> serde_json::Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("a record within 20 s")
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn audit_log_last_shows_the_newest_records_in_order() {
    let t = spawn_app().await;
    for serial in 1..=5 {
        let r = t
            .as_("alice")
            .post("dev/app", state_doc(serial, "L", ""))
            .send()
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(t.as_("bob").get("dev/other").send().await.status(), 204);
    let log = |args: &[&str]| {
        let mut all = vec![
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--format",
            "json",
        ];
        all.extend_from_slice(args);
        bulkhead(t.dir.path(), &all)
    };
    let versions = |out: &Output| -> Vec<i64> {
        stdout(out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["version"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    };
    let last = log(&["--env", "dev", "--action", "state:write", "--last", "2"]);
    assert!(last.status.success(), "{}", stderr(&last));
    assert_eq!(versions(&last), vec![4, 5]);
    let by_state = log(&[
        "--env",
        "dev",
        "--state",
        "app",
        "--principal",
        "user:alice",
        "--last",
        "3",
    ]);
    assert_eq!(versions(&by_state), vec![3, 4, 5]);
    let newest = log(&["--last", "1"]);
    let newest: serde_json::Value = serde_json::from_str(stdout(&newest).trim()).unwrap();
    assert_eq!(newest["state"], "other");
    let unknown = log(&["--env", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("--env nosuch"),
        "{}",
        stderr(&unknown)
    );
}

/// Audit queries find records by their fields in an index filled from the chain every so many
/// records, and among the records appended since, read from the chain itself: each matching
/// record is found once, on either side of that line, and the newest come in order. What
/// queries find records by is not covered by the chain's hashes, so verification checks it
/// too: an edited index could hide records.
#[tokio::test]
async fn audit_log_finds_records_whether_indexed_yet_or_not() {
    let t = spawn_app().await;
    let reads = bulkhead::audit::INDEX_EVERY + 44;
    for i in 0..reads {
        let (state, who) = if i % 3 == 0 {
            ("dev/a", "alice")
        } else {
            ("dev/b", "bob")
        };
        assert_eq!(t.as_(who).get(state).send().await.status(), 204);
    }
    let chain = t.app.stores.audit_store(Some("dev"));
    let indexed = chain.indexed_through().await.unwrap();
    let all = chain.newest_position().await.unwrap();
    assert_eq!(all, reads);
    assert!(
        0 < indexed && indexed < all,
        "{indexed} of {all} records indexed: this test needs some of each"
    );

    let log = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["audit", "log", "--config", "bulkhead.hcl", "--env", "dev"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        let out = bulkhead(t.dir.path(), &all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let of_a = (reads + 2) / 3;
    assert_eq!(log(&["--state", "a"]).len() as i64, of_a);
    assert_eq!(log(&["--principal", "user:bob"]).len() as i64, reads - of_a);
    // A name as the config spells it is the principal's, not a filter that matches nothing.
    assert_eq!(log(&["--principal", "bob"]).len() as i64, reads - of_a);
    let unknown = bulkhead(
        t.dir.path(),
        &[
            "audit",
            "log",
            "--config",
            "bulkhead.hcl",
            "--principal",
            "carol",
        ],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("--principal carol: no user or service is called `carol`"),
        "{}",
        stderr(&unknown)
    );
    // One no longer in the config can still be looked for by its full name.
    assert!(log(&["--principal", "user:carol"]).is_empty());
    assert_eq!(
        log(&["--decision", "allow", "--since", "1h"]).len() as i64,
        reads
    );
    assert_eq!(log(&["--state", "a", "--principal", "user:bob"]).len(), 0);

    // The newest 150 of state b: some indexed, some not, oldest first.
    let chain: Vec<String> = t
        .audit(Some("dev"))
        .await
        .into_iter()
        .filter(|r| r.state.as_deref() == Some("b"))
        .map(|r| r.time)
        .collect();
    let newest: Vec<String> = log(&["--state", "b", "--last", "150"])
        .iter()
        .map(|r| r["time"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(newest, chain[chain.len() - 150..]);

    let dir = t.dir.path();
    let verify = || bulkhead(dir, &["audit", "verify", "--config", "bulkhead.hcl"]);
    let ok = verify();
    assert!(
        stdout(&ok).contains(&format!("dev: {reads} records, chain intact")),
        "{}",
        stdout(&ok)
    );
    allow_audit_tampering(dir, "dev").await;
    for (table, seq) in [("audit", all), ("audit_index", 5)] {
        let sql = format!("UPDATE {table} SET principal = 'user:carol' WHERE seq = {seq}");
        exec_sql(dir, "dev", &sql).await;
        let broken = verify();
        assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
        assert!(
            stdout(&broken).contains(&format!(
                "dev: BROKEN at record {seq}: the fields audit queries find it by were edited"
            )),
            "{}",
            stdout(&broken)
        );
    }
}

#[test]
fn backend_prints_the_block_for_a_state_and_refuses_what_names_none() {
    let (dir, _) = with_config(CONFIG);
    let protected = CONFIG.replace(
        "  write = [\"service:ci-prod\"]\n}",
        "  write = [\"service:ci-prod\"]\n  approval {\n    required = 1\n  }\n}",
    );
    std::fs::write(dir.path().join("bulkhead.hcl"), protected).unwrap();
    let url = "https://bh.example/v1/state/prod/network?change=prod-3";
    let o = bulkhead(
        dir.path(),
        &[
            "backend",
            "prod/network",
            "--change",
            "prod-3",
            "--server",
            "https://bh.example/",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for key in ["address", "lock_address", "unlock_address"] {
        assert!(
            stdout(&o).contains(&format!("{key:<14} = \"{url}\"")),
            "{}",
            stdout(&o)
        );
    }
    // With the config: a protected environment without a change is told what a write needs.
    let o = bulkhead(
        dir.path(),
        &["backend", "prod/network", "-c", "bulkhead.hcl"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("prod is protected"), "{}", stderr(&o));
    let o = bulkhead(
        dir.path(),
        &[
            "backend",
            "dev/app",
            "-c",
            "bulkhead.hcl",
            "--format",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(json["lock_method"], "LOCK");
    assert_eq!(
        json["unlock_address"],
        "http://127.0.0.1:8080/v1/state/dev/app"
    );

    for (args, says) in [
        (&["backend", "prod"][..], "write ENVIRONMENT/NAME"),
        (&["backend", "prod/a b"], "contains ` `"),
        (
            &["backend", "prod/x", "--change", "dev-1"],
            "change dev-1 is one of dev, not of prod",
        ),
        (&["backend", "prod/x", "--change", "prod-01"], "prod-1"),
        (
            &["backend", "prod/x", "--server", "ftp://x"],
            "is not a server address",
        ),
        (
            &["backend", "nope/x", "-c", "bulkhead.hcl"],
            "there is no environment `nope`",
        ),
    ] {
        let o = bulkhead(dir.path(), args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
}
