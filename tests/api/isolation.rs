//! One environment whose database cannot be opened harms only itself: the server starts at
//! once, the environment answers 503 with a sentence naming it and its database, the others
//! are served, and once a request has tried to open it, `/healthz` names it while staying
//! 200, and `/readyz` says not ready.
//!
//! On SQLite `dev.db` is overwritten with bytes that are not a database; on PostgreSQL the
//! schema of `dev` holds a migrations table its migrations cannot read.

use std::path::Path;
use std::time::Instant;

use reqwest::StatusCode;

use crate::helpers::*;

const GARBAGE: &[u8] = b"this is not a SQLite database, only text where one should be\n";

/// Writes the config to `dir` and damages `dev`'s database before any server opens it.
async fn damage_dev(dir: &Path) -> Vec<u8> {
    let text = with_test_storage(CONFIG);
    std::fs::write(dir.join("bulkhead.hcl"), &text).expect("write config");
    match text
        .lines()
        .find_map(|l| l.trim().strip_prefix("storage  = \""))
        .and_then(|l| l.strip_suffix('"'))
    {
        Some(url) => {
            use sqlx::{Connection, Executor};
            let mut conn = sqlx::PgConnection::connect(url)
                .await
                .expect("connect to the test database");
            conn.execute(
                "CREATE SCHEMA bulkhead_env_dev; \
                 CREATE TABLE bulkhead_env_dev._sqlx_migrations (garbage text)",
            )
            .await
            .expect("damage dev's schema");
            Vec::new()
        }
        None => {
            let envs = dir.join("data").join("environments");
            std::fs::create_dir_all(&envs).expect("create the data directory");
            let garbage = GARBAGE.repeat(64);
            std::fs::write(envs.join("dev.db"), &garbage).expect("write garbage over dev.db");
            garbage
        }
    }
}

#[tokio::test]
async fn an_unopenable_environment_is_refused_alone_and_the_others_are_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = damage_dev(dir.path()).await;
    let started = Instant::now();
    let t = spawn_app_in(dir).await;
    println!(
        "start with a damaged dev database ({}): {:?}",
        if on_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        started.elapsed()
    );

    // prod reads and writes as ever.
    let doc = state_doc(1, "L-prod", "");
    assert_status(
        &t.as_("ci-prod").post("prod/net", doc.clone()).send().await,
        StatusCode::OK,
    );
    let read = t.as_("pat").get("prod/net").send().await;
    assert_status(&read, StatusCode::OK);
    assert_eq!(read.bytes().await.expect("body").to_vec(), doc);

    // dev is refused with a sentence naming it, its database and the cause, for reads and
    // writes alike.
    for (method, body) in [("GET", None), ("POST", Some(state_doc(1, "L-dev", "")))] {
        let mut request = t.as_("alice").request(method, "dev/app");
        if let Some(body) = body {
            request = request.body(body);
        }
        let resp = request.send().await;
        assert_status(&resp, StatusCode::SERVICE_UNAVAILABLE);
        let text = resp.text().await.expect("body");
        assert!(
            text.contains("environment dev is unavailable: its database "),
            "{text}"
        );
        assert!(text.contains("the other environments are served"), "{text}");
        if on_postgres() {
            assert!(text.contains("bulkhead_env_dev"), "{text}");
        } else {
            assert!(
                text.contains("dev.db cannot be opened (file is not a database)"),
                "{text}"
            );
        }
    }
    // Nothing was written to it, and it was not replaced.
    if !on_postgres() {
        let file = t.dir.path().join("data/environments/dev.db");
        assert_eq!(std::fs::read(file).expect("dev.db is still there"), garbage);
    }

    // Liveness holds and names dev; readiness does not.
    let health = t
        .client
        .get(format!("{}/healthz", t.base()))
        .send()
        .await
        .expect("healthz");
    assert_status(&health, StatusCode::OK);
    let health: serde_json::Value = health.json().await.expect("healthz is JSON");
    assert_eq!(health["status"], "degraded", "{health}");
    let named: Vec<&str> = health["unavailable"]
        .as_array()
        .expect("a list of unavailable databases")
        .iter()
        .filter_map(|u| u["database"].as_str())
        .collect();
    assert_eq!(named, ["dev"], "{health}");
    let ready = t
        .client
        .get(format!("{}/readyz", t.base()))
        .send()
        .await
        .expect("readyz");
    assert_status(&ready, StatusCode::SERVICE_UNAVAILABLE);

    // Status shows dev as unavailable and the others as usual.
    let status = t.status_as("pat").await;
    let envs = status.as_array().expect("a list of environments");
    let dev = envs
        .iter()
        .find(|e| e["environment"] == "dev")
        .expect("dev is listed");
    assert!(
        dev["unavailable"]
            .as_str()
            .is_some_and(|s| s.contains("environment dev is unavailable")),
        "{dev}"
    );
    let prod = envs
        .iter()
        .find(|e| e["environment"] == "prod")
        .expect("prod is listed");
    assert!(prod.get("unavailable").is_none(), "{prod}");
    assert_eq!(prod["states"][0]["name"], "net", "{prod}");

    // Verification reports dev's problem and still checks the others.
    let verify = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(["audit", "verify", "--config", "bulkhead.hcl"])
        .current_dir(t.dir.path())
        .output()
        .await
        .expect("run bulkhead audit verify");
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(!verify.status.success(), "{out}");
    // staging was never used: it has no database yet, and nothing to verify.
    assert!(!out.contains("staging"), "{out}");
    for chain in ["server", "prod"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{chain}: ")) && l.contains("chain intact")),
            "{chain} is checked: {out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with("dev: UNREADABLE: ") && l.contains("could not be checked")),
        "{out}"
    );
}

#[tokio::test]
async fn a_healthy_server_is_ready() {
    let t = spawn_app().await;
    let ready = t
        .client
        .get(format!("{}/readyz", t.base()))
        .send()
        .await
        .expect("readyz");
    assert_status(&ready, StatusCode::OK);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body["status"], "ok", "{body}");
}

/// `bulkhead serve` itself: it listens at once, and once a request has tried to open dev's
/// database, its log says in one line which environment is not served, its database and why.
#[tokio::test]
async fn serve_logs_the_unopenable_environment_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    damage_dev(dir.path()).await;
    let t = spawn_app_in(dir).await;
    let started = Instant::now();
    let served = t.serve_process().await;
    println!(
        "bulkhead serve listening with a damaged dev database ({}): {:?}",
        if on_postgres() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        started.elapsed()
    );
    // dev's database is opened by its first request.
    let refused = t.as_("alice").on(&served.base).get("dev/app").send().await;
    assert_status(&refused, StatusCode::SERVICE_UNAVAILABLE);
    let log = std::fs::read_to_string(&served.log).expect("read the log");
    let line = log
        .lines()
        .find(|l| l.contains("environment unavailable"))
        .unwrap_or_else(|| panic!("no line names the unavailable environment:\n{log}"));
    assert!(line.contains("environment=dev"), "{line}");
    if on_postgres() {
        assert!(line.contains("bulkhead_env_dev"), "{line}");
    } else {
        assert!(line.contains("environments/dev.db"), "{line}");
        assert!(line.contains("file is not a database"), "{line}");
    }
    let ready = reqwest::get(format!("{}/readyz", served.base))
        .await
        .expect("readyz");
    assert_status(&ready, StatusCode::SERVICE_UNAVAILABLE);
}
