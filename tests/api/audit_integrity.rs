//! The audit log against someone who can write its databases but lacks the audit key: each
//! attack done straight on the database (triggers lifted or disabled, as the table owner can),
//! then `bulkhead audit verify` must name it; and an untampered log verifies, across restarts
//! and across the upgrade of a chain begun before records were keyed.

use std::path::{Path, PathBuf};
use std::process::Output;

use bulkhead::audit::legacy_link;
use bulkhead::config::Config;
use bulkhead::http::App;
use sqlx::{AnyConnection, Connection, Executor, Row};

use crate::changes::spawn_protected;
use crate::helpers::*;

/// Runs `bulkhead audit verify` in `dir` with more arguments and environment variables.
fn verify_with(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command
        .args(["audit", "verify", "--config", "bulkhead.hcl"])
        .args(args)
        .current_dir(dir)
        .env_remove("BULKHEAD_CONFIG")
        .env_remove("BULKHEAD_AUDIT_KEY");
    for (k, v) in vars {
        command.env(k, v);
    }
    command.output().expect("run bulkhead audit verify")
}

fn verify(dir: &Path) -> Output {
    verify_with(dir, &[], &[])
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts verification fails, with `chain`'s line naming `problem`, and returns the output.
fn assert_broken(dir: &Path, chain: &str, problem: &str) -> String {
    let o = verify(dir);
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{chain}: ")))
        .unwrap_or_else(|| panic!("no line for {chain}:\n{text}"));
    assert!(
        line.starts_with(&format!("{chain}: BROKEN")) && line.contains(problem),
        "{chain} should be broken with `{problem}`:\n{text}"
    );
    text
}

fn assert_intact(dir: &Path) -> String {
    let o = verify(dir);
    let text = out(&o);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("BROKEN"), "{text}");
    text
}

/// Stops a `bulkhead serve` process as an operator does (SIGTERM), through its graceful
/// shutdown, which writes the last checkpoints; returns its log.
async fn stop(mut served: Served) -> String {
    let pid = served.child.id().expect("the server runs").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(killed.success());
    let status = served.child.wait().await.expect("the server stops");
    assert!(
        status.success(),
        "the server did not stop cleanly: {status}"
    );
    std::fs::read_to_string(&served.log).expect("the server's log")
}

/// A server with some history: three versions of dev/app and a few reads, written through a
/// `bulkhead serve` process that is then stopped (so the chains have checkpoints).
async fn with_history() -> TestApp {
    let t = spawn_app().await;
    let s = t.serve_process().await;
    write_some(&t, &s, 1..=3).await;
    stop(s).await;
    t
}

async fn write_some(t: &TestApp, s: &Served, serials: std::ops::RangeInclusive<i64>) {
    for serial in serials {
        let r = t
            .as_("alice")
            .on(&s.base)
            .post("dev/app", state_doc(serial, "L", ""))
            .send()
            .await;
        assert_eq!(r.status(), 200);
        let r = t.as_("bob").on(&s.base).get("dev/app").send().await;
        assert_eq!(r.status(), 200);
        let r = t.as_("eve").on(&s.base).get("dev/app").send().await;
        assert_eq!(r.status(), 403);
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// A connection to an environment's database (`server`: the server's), as its owner has.
async fn connect(dir: &Path, env: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    let config = Config::load(&dir.join("bulkhead.hcl")).expect("test config");
    match &config.server.storage {
        Some(url) => {
            let schema = if env == "server" {
                "bulkhead".to_string()
            } else {
                format!("bulkhead_env_{env}")
            };
            let mut conn = AnyConnection::connect(url).await.unwrap();
            conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
                .await
                .unwrap();
            conn
        }
        None => {
            let path = if env == "server" {
                data_dir(dir).join("bulkhead.db")
            } else {
                bulkhead::config::storage::environment_file(&data_dir(dir), env)
            };
            AnyConnection::connect(&format!("sqlite:{}", path.display()))
                .await
                .unwrap()
        }
    }
}

/// Lifts every append-only guard of an environment's database, as its owner can: on
/// PostgreSQL the table owner disables the triggers, on SQLite whoever can write the file
/// drops them.
async fn lift_guards(dir: &Path, env: &str) {
    // The trigger that moves the head along stays: the server appends again afterwards.
    let sql = if on_postgres() {
        "ALTER TABLE audit DISABLE TRIGGER audit_append_only; \
         ALTER TABLE audit_index DISABLE TRIGGER audit_index_append_only; \
         ALTER TABLE audit_seal DISABLE TRIGGER audit_seal_once; \
         ALTER TABLE audit_seal DISABLE TRIGGER audit_seal_no_delete; \
         ALTER TABLE versions DISABLE TRIGGER versions_append_only; \
         ALTER TABLE content_chunks DISABLE TRIGGER content_chunks_append_only"
    } else {
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete; \
         DROP TRIGGER IF EXISTS audit_index_no_update; DROP TRIGGER IF EXISTS audit_index_no_delete; \
         DROP TRIGGER IF EXISTS audit_seal_once; DROP TRIGGER IF EXISTS audit_seal_no_delete; \
         DROP TRIGGER IF EXISTS versions_no_update; DROP TRIGGER IF EXISTS versions_no_delete; \
         DROP TRIGGER IF EXISTS content_chunks_no_update; \
         DROP TRIGGER IF EXISTS content_chunks_no_delete"
    };
    exec(dir, env, sql).await;
}

async fn exec(dir: &Path, env: &str, sql: &str) {
    let mut conn = connect(dir, env).await;
    conn.execute(sql).await.unwrap();
    conn.close().await.unwrap();
}

async fn count(dir: &Path, env: &str, sql: &str) -> i64 {
    let mut conn = connect(dir, env).await;
    let n: i64 = sqlx::query(sql).fetch_one(&mut conn).await.unwrap().get(0);
    conn.close().await.unwrap();
    n
}

/// Rewrites every record of a chain from `from` on with plain SHA-256 links, as someone
/// without the key could, after `edit` changed their content; moves the head along.
async fn re_hash(dir: &Path, env: &str, from: i64, edit: impl Fn(i64, String) -> String) {
    let mut conn = connect(dir, env).await;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, record, prev_hash FROM audit ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut prev = None;
    for (seq, record, prev_hash) in rows {
        if seq < from {
            let (h,): (String,) = sqlx::query_as("SELECT hash FROM audit WHERE seq = $1")
                .bind(seq)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            prev = Some(h);
            continue;
        }
        let record = edit(seq, record);
        let prev_hash = prev.clone().unwrap_or(prev_hash);
        let hash = legacy_link(seq, &prev_hash, &record);
        sqlx::query("UPDATE audit SET record = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&record)
            .bind(&prev_hash)
            .bind(&hash)
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&hash)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = Some(hash);
    }
    conn.close().await.unwrap();
}

/// The newest record of a chain and the stored head, as verification reads them.
async fn newest(dir: &Path, env: &str) -> (i64, i64) {
    (
        count(dir, env, "SELECT COALESCE(MAX(seq), 0) FROM audit").await,
        count(dir, env, "SELECT COALESCE(MAX(seq), 0) FROM audit_head").await,
    )
}

#[tokio::test]
async fn an_untampered_log_verifies_across_restarts_and_checkpoints_are_written() {
    let t = spawn_app().await;
    let dir = t.dir.path();
    let s = t.serve_process().await;
    write_some(&t, &s, 1..=2).await;
    let log = stop(s).await;
    assert!(log.contains("audit checkpoint"), "{log}");
    let text = assert_intact(dir);
    assert!(text.contains("dev: "), "{text}");
    assert!(text.contains("checkpoints match"), "{text}");

    let s = t.serve_process().await;
    write_some(&t, &s, 3..=4).await;
    let log = stop(s).await;
    assert_intact(dir);

    let key_file = data_dir(dir).join("audit.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(!log.contains(key.trim()), "the audit key reached the log");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The last checkpoint of dev is the shutdown's, at its newest record.
    let checkpoints = std::fs::read_to_string(data_dir(dir).join("checkpoints/dev.checkpoints"))
        .expect("dev's checkpoints");
    let last: serde_json::Value =
        serde_json::from_str(checkpoints.lines().last().unwrap()).unwrap();
    assert_eq!(last["why"], "shutdown");
    assert_eq!(last["seq"], newest(dir, "dev").await.0);
    assert!(log.contains(checkpoints.lines().last().unwrap().trim()));

    // The same key in BULKHEAD_AUDIT_KEY takes precedence over a file that does not hold it.
    std::fs::rename(&key_file, dir.join("moved.key")).unwrap();
    let missing = verify(dir);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        out(&missing).contains("audit.key does not exist"),
        "{}",
        out(&missing)
    );
    let with_var = verify_with(dir, &[], &[("BULKHEAD_AUDIT_KEY", key.trim())]);
    assert!(with_var.status.success(), "{}", out(&with_var));
    assert!(!key_file.exists(), "verification created a key");
}

#[tokio::test]
async fn an_edited_record_re_hashed_without_the_key_is_found() {
    let t = with_history().await;
    let dir = t.dir.path();
    assert_intact(dir);
    lift_guards(dir, "dev").await;
    // Who read the state rewritten, and every link after it computed again.
    re_hash(dir, "dev", 2, |seq, record| {
        if seq == 2 {
            let edited = record.replace("\"user:bob\"", "\"user:alice\"");
            assert_ne!(edited, record);
            edited
        } else {
            record
        }
    })
    .await;
    assert_broken(dir, "dev", "record 2: it carries a plain hash, not a MAC");
}

#[tokio::test]
async fn a_cut_tail_is_found_against_the_checkpoints() {
    let t = with_history().await;
    let dir = t.dir.path();
    let (seq, _) = newest(dir, "dev").await;
    lift_guards(dir, "dev").await;
    exec(
        dir,
        "dev",
        &format!(
            "DELETE FROM audit WHERE seq > {cut}; DELETE FROM audit_index WHERE seq > {cut}; \
             UPDATE audit_head SET seq = {cut}, hash = (SELECT hash FROM audit WHERE seq = {cut})",
            cut = seq - 2
        ),
    )
    .await;
    assert_eq!(newest(dir, "dev").await, (seq - 2, seq - 2));
    let text = assert_broken(dir, "dev", "records were cut off the end");
    assert!(text.contains(&format!("saw record {seq}")), "{text}");
    // The server, started again, says so as soon as dev is opened.
    let s = t.serve_process().await;
    let r = t.as_("bob").on(&s.base).get("dev/app").send().await;
    assert_eq!(r.status(), 200);
    let said = "the audit chain ends before a record this server checkpointed";
    for _ in 0..200 {
        if std::fs::read_to_string(&s.log).is_ok_and(|log| log.contains(said)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = stop(s).await;
    assert!(log.contains(said), "{log}");
    // Without the checkpoints, nothing would show it.
    let elsewhere = tempfile::tempdir().unwrap();
    let blind = verify_with(
        dir,
        &["--checkpoints", elsewhere.path().to_str().unwrap()],
        &[],
    );
    assert!(blind.status.success(), "{}", out(&blind));
    assert!(
        out(&blind).contains("no checkpoint of it"),
        "{}",
        out(&blind)
    );
}

#[tokio::test]
async fn an_emptied_chain_is_found() {
    let t = with_history().await;
    let dir = t.dir.path();
    lift_guards(dir, "dev").await;
    exec(
        dir,
        "dev",
        "DELETE FROM audit; DELETE FROM audit_index; DELETE FROM audit_head",
    )
    .await;
    assert_broken(dir, "dev", "the chain is empty");
}

/// A copy of `dev.db` taken earlier put back, and another environment's database put in
/// place of one: files only SQLite has (on PostgreSQL, an older dump restored is the cut tail
/// above).
#[tokio::test]
async fn an_older_copy_or_another_chains_database_is_found() {
    if on_postgres() {
        return;
    }
    let t = spawn_app().await;
    let dir = t.dir.path();
    let envs = data_dir(dir).join("environments");
    let s = t.serve_process().await;
    write_some(&t, &s, 1..=2).await;
    stop(s).await;
    let copy = dir.join("dev-copy.db");
    exec(dir, "dev", &format!("VACUUM INTO '{}'", copy.display())).await;
    let s = t.serve_process().await;
    write_some(&t, &s, 3..=4).await;
    stop(s).await;
    assert_intact(dir);
    let put_back = |copy: &Path, name: &str| {
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(envs.join(format!("{name}.db{suffix}")));
        }
        let fresh = envs.join(format!("{name}.db.new"));
        std::fs::copy(copy, &fresh).unwrap();
        std::fs::rename(&fresh, envs.join(format!("{name}.db"))).unwrap();
    };
    put_back(&copy, "dev");
    assert_broken(
        dir,
        "dev",
        "an older copy of the database was put in its place",
    );

    put_back(&copy, "staging");
    assert_broken(dir, "staging", "record 1: its MAC does not match");
}

#[tokio::test]
async fn a_deleted_database_is_named_and_never_created() {
    let t = with_history().await;
    let dir = t.dir.path();
    let file = bulkhead::config::storage::environment_file(&data_dir(dir), "dev");
    if on_postgres() {
        exec(dir, "server", "DROP SCHEMA bulkhead_env_dev CASCADE").await;
        assert_broken(dir, "dev", "(schema bulkhead_env_dev) does not exist");
        let schemas = count(
            dir,
            "server",
            "SELECT COUNT(*) FROM pg_namespace WHERE nspname = 'bulkhead_env_dev'",
        )
        .await;
        assert_eq!(schemas, 0, "verification created the schema");
    } else {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
        assert_broken(dir, "dev", "data/environments/dev.db does not exist");
        assert!(!file.exists(), "verification created the database");
    }
}

#[tokio::test]
async fn changes_approvals_grants_and_versions_without_records_are_found() {
    let p = spawn_protected("24h").await;
    let dir = p.t.dir.path();
    let id = p.propose("alice", "prod", "network").await;
    p.client("pat").decide(&id, "approve", None).await.unwrap();
    p.client("pat")
        .open_breakglass("prod", "the pipeline is down", Some("1h"))
        .await
        .unwrap();
    assert_intact(dir);

    let forgeries = [
        (
            "INSERT INTO changes (number, state, title, author, created_at, plan_sha256, summary) \
             VALUES (2, 'network', 'quiet', 'user:alice', '2026-12-01T00:00:00Z', 'x', '{}')",
            "change prod-2 has no audit record",
            "DELETE FROM changes WHERE number = 2",
        ),
        (
            "INSERT INTO approvals (change_number, approver, approved_at, expires_at) \
             VALUES (1, 'user:quinn', '2026-12-01T00:00:00Z', '2099-01-01T00:00:00Z')",
            "the approval of change prod-1 by user:quinn has no audit record",
            "DELETE FROM approvals WHERE approver = 'user:quinn'",
        ),
        (
            "INSERT INTO breakglass (number, principal, reason, opened_at, expires_at) \
             VALUES (5, 'user:alice', 'x', '2026-12-01T00:00:00Z', '2099-01-01T00:00:00Z')",
            "break-glass grant prod-bg5 has no audit record",
            "DELETE FROM breakglass WHERE number = 5",
        ),
    ];
    for (forge, problem, undo) in forgeries {
        exec(dir, "prod", forge).await;
        assert_broken(dir, "prod", problem);
        exec(dir, "prod", undo).await;
        assert_intact(dir);
    }
    // A version whose content matches its hash, but that no write recorded.
    let content = if on_postgres() {
        "decode('7b7d', 'hex')"
    } else {
        "X'7b7d'"
    };
    exec(
        dir,
        "prod",
        &format!(
            "INSERT INTO versions (state, version, sha256, size, principal, created_at, content) \
             VALUES ('network', 1, '{}', 2, 'service:ci-prod', '2026-12-01T00:00:00Z', {content})",
            bulkhead::state::sha256_hex(b"{}")
        ),
    )
    .await;
    assert_broken(
        dir,
        "prod",
        "version 1 of state network has no audit record",
    );
}

#[tokio::test]
async fn edited_state_content_is_found() {
    let t = with_history().await;
    let dir = t.dir.path();
    lift_guards(dir, "dev").await;
    let (data, sha) = if on_postgres() {
        ("decode('7b7d', 'hex')", bulkhead::state::sha256_hex(b"{}"))
    } else {
        ("X'7b7d'", bulkhead::state::sha256_hex(b"{}"))
    };
    exec(
        dir,
        "dev",
        &format!("UPDATE content_chunks SET data = {data} WHERE state = 'app' AND version = 2"),
    )
    .await;
    assert_broken(
        dir,
        "dev",
        "the content of version 2 of state app in environment dev does not match its SHA-256",
    );
    // The content and its hash replaced together: the record of the write still has the hash.
    exec(
        dir,
        "dev",
        &format!(
            "UPDATE versions SET sha256 = '{sha}', size = 2 WHERE state = 'app' AND version = 2"
        ),
    )
    .await;
    assert_broken(
        dir,
        "dev",
        "version 2 of state app does not have the hash its audit record was written with",
    );
}

#[tokio::test]
async fn forged_checkpoints_and_a_replaced_key_are_found() {
    let t = with_history().await;
    let dir = t.dir.path();
    let file = data_dir(dir).join("checkpoints/dev.checkpoints");
    let text = std::fs::read_to_string(&file).unwrap();
    // A checkpoint moved back, as someone cutting the tail would need.
    let last = text.lines().last().unwrap().to_string();
    let seq = newest(dir, "dev").await.0;
    let moved = last.replace(&format!("\"seq\":{seq}"), &format!("\"seq\":{}", seq - 1));
    assert_ne!(moved, last);
    std::fs::write(&file, format!("{text}{moved}\n")).unwrap();
    assert_broken(dir, "dev", "not signed with this server's audit key");
    std::fs::write(&file, &text).unwrap();
    assert_intact(dir);

    // A new key in place of the one the chains were written with: the server does not start
    // under it, and nothing verifies under it.
    let key_file = data_dir(dir).join("audit.key");
    let old = std::fs::read(&key_file).unwrap();
    std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
    let before = (newest(dir, "server").await, newest(dir, "dev").await);
    let config = Config::load(&dir.join("bulkhead.hcl")).unwrap();
    let refused = match App::open(config).await {
        Ok(_) => panic!("the server started under another key"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("not written with this audit key"),
        "{refused}"
    );
    let after = (newest(dir, "server").await, newest(dir, "dev").await);
    assert_eq!(before, after, "records were appended under the wrong key");
    assert_broken(dir, "dev", "record 1: its MAC does not match");
    std::fs::write(&key_file, old).unwrap();
    assert_intact(dir);
}

/// Why a server opened on the config in `dir` refuses dev: its database is opened at dev's
/// first request, and refused then (`wrong` is what opening it would mean).
async fn dev_refused(dir: &Path, wrong: &str) -> String {
    let config = Config::load(&dir.join("bulkhead.hcl")).unwrap();
    let app = App::open(config).await.expect("the server opens");
    let dev = app.config.environment("dev").expect("dev");
    match app.stores.open_environment(&app.config, dev).await {
        Ok(_) => panic!("{wrong}"),
        Err(down) => down.sentence("dev"),
    }
}

/// A chain begun before records were keyed, as the previous version left it (plain SHA-256
/// links, no seal): verification asks for the upgrade, the first start seals the old part
/// (refusing while it does not verify), and the chain verifies from then on, old part included.
#[tokio::test]
async fn a_chain_from_before_keyed_records_is_sealed_at_start() {
    let t = with_history().await;
    let dir = t.dir.path();
    lift_guards(dir, "dev").await;
    re_hash(dir, "dev", 1, |_, record| record).await;
    exec(
        dir,
        "dev",
        "DROP TABLE audit_seal; DELETE FROM _sqlx_migrations WHERE version = 20",
    )
    .await;
    assert_broken(dir, "dev", "not brought up to date");
    // Such a chain, on a server that has checkpointed it (so it was keyed), is a rewrite: the
    // server does not seal it.
    let refused = dev_refused(dir, "the server sealed a chain it had checkpointed").await;
    assert!(
        refused.contains("checkpointed the chain already"),
        "{refused}"
    );
    // The previous version wrote no checkpoints.
    std::fs::remove_file(data_dir(dir).join("checkpoints/dev.checkpoints")).unwrap();
    let unkeyed = newest(dir, "dev").await.0;
    assert_broken(dir, "dev", "not sealed yet");

    // The old part tampered with before the upgrade: the server will not seal it.
    let mut conn = connect(dir, "dev").await;
    let (record,): (String,) = sqlx::query_as("SELECT record FROM audit WHERE seq = 2")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let edited = record.replace("\"user:bob\"", "\"user:alice\"");
    assert_ne!(edited, record);
    sqlx::query("UPDATE audit SET record = $1 WHERE seq = 2")
        .bind(edited)
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = dev_refused(dir, "the server sealed a tampered chain").await;
    assert!(refused.contains("cannot be sealed"), "{refused}");
    assert!(refused.contains("record 2"), "{refused}");
    let pending = count(
        dir,
        "dev",
        "SELECT COUNT(*) FROM audit_seal WHERE mac IS NULL",
    )
    .await;
    assert_eq!(pending, 1, "a tampered part was sealed");
    assert_eq!(newest(dir, "dev").await.0, unkeyed, "records were appended");
    sqlx::query("UPDATE audit SET record = $1 WHERE seq = 2")
        .bind(&record)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    let s = t.serve_process().await;
    write_some(&t, &s, 4..=5).await;
    let log = stop(s).await;
    assert!(log.contains("verified and sealed"), "{log}");
    assert_intact(dir);
    let sealed = count(
        dir,
        "dev",
        "SELECT seq FROM audit_seal WHERE mac IS NOT NULL",
    )
    .await;
    assert_eq!(sealed, unkeyed);
    assert!(newest(dir, "dev").await.0 > unkeyed);

    // After the seal, the old part is as protected as the rest: an edit in it is found.
    lift_guards(dir, "dev").await;
    exec(
        dir,
        "dev",
        "UPDATE audit SET record = replace(record, '\"user:bob\"', '\"user:alice\"') WHERE seq = 2",
    )
    .await;
    assert_broken(dir, "dev", "record 2: its content does not match its hash");
}
