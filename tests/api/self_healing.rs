//! Faults the server recovers from by itself, and says plainly while they last: a full disk
//! (writes refused with a sentence saying so, 507; once space is freed the next write
//! succeeds, without a restart), a transaction the database ended half-way, an audit log that
//! cannot be written (the request log line gives the status the client received).
//!
//! The data directory is put on a small tmpfs of its own, which needs root; without it the
//! test says it was skipped and why. PostgreSQL's disk is the database server's, out of a
//! test's reach: on PostgreSQL runs the test is skipped too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::StatusCode;

use crate::helpers::*;

/// A tmpfs mounted on a directory of its own, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let path = dir.path().join("data");
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {path:?}: {e}"))?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !mounted.status.success() {
            return Err(format!(
                "cannot mount a tmpfs (root is needed): {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the server's files may still be open when this runs.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system under `dir` with one file, until the disk says it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {path:?}: {e}"),
        }
    }
    // What is left over is less than a page: nothing more fits.
    while let Ok(n) = file.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
    }
    path
}

/// A state of about `size` bytes.
fn big_state(serial: i64, size: usize) -> Vec<u8> {
    state_doc(
        serial,
        "full",
        &format!(r#","padding":"{}""#, "x".repeat(size)),
    )
}

#[tokio::test]
async fn a_full_disk_is_said_and_freeing_space_is_enough() {
    if on_postgres() {
        println!("SKIPPED: PostgreSQL's disk is the database server's, out of this test's reach");
        return;
    }
    let tmpfs = match Tmpfs::mount("8m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    let config = CONFIG.replace(
        "data_dir = \"data\"",
        &format!("data_dir = {:?}", tmpfs.path.display().to_string()),
    );
    let app = spawn_app_on_sqlite(&config).await;
    // A server process of its own, whose log can be read.
    let served = app.serve_process().await;
    let post = |serial: i64, size: usize, lock: Option<&'static str>| {
        let path = match lock {
            Some(id) => format!("dev/app?ID={id}"),
            None => "dev/app".to_string(),
        };
        let base = served.base.clone();
        let app = &app;
        async move {
            app.as_("alice")
                .on(&base)
                .post(&path, big_state(serial, size))
                .send()
                .await
        }
    };
    let lock = |method: &'static str| {
        let base = served.base.clone();
        let app = &app;
        async move {
            let body = lock_info("l-1", "OperationTypeApply").into_bytes();
            app.as_("alice")
                .on(&base)
                .request(method, "dev/app")
                .body(body)
                .send()
                .await
        }
    };
    assert_status(&post(1, 1000, None).await, StatusCode::OK);
    let stored = app.stored("dev", "app").await;

    let filler = fill(&tmpfs.path);
    let database = tmpfs.path.join("environments").join("dev.db");
    for serial in 2..5 {
        let refused = post(serial, 48 * 1024, None).await;
        assert_status(&refused, StatusCode::INSUFFICIENT_STORAGE);
        let sentence = refused.text().await.unwrap();
        assert_eq!(
            sentence.trim(),
            format!(
                "the disk under {} is full: free space; nothing was written",
                database.display()
            )
        );
    }
    assert_eq!(
        app.stored("dev", "app").await,
        stored,
        "nothing was written"
    );
    assert_eq!(app.versions("dev", "app").await.len(), 1);

    // Space freed: the very next writes succeed, on the same server.
    std::fs::remove_file(&filler).expect("remove the filler");
    assert_status(&lock("LOCK").await, StatusCode::OK);
    assert_status(&post(2, 48 * 1024, Some("l-1")).await, StatusCode::OK);
    assert_status(&lock("UNLOCK").await, StatusCode::OK);
    assert_eq!(
        app.stored("dev", "app").await,
        Some(big_state(2, 48 * 1024))
    );
    assert_eq!(app.versions("dev", "app").await.len(), 2);

    // Told once when the disk filled, and once when writes succeeded again.
    let log = std::fs::read_to_string(&served.log).expect("the server's log");
    let about_dev = |message: &str| {
        log.lines()
            .filter(|l| l.contains(message) && l.contains(&database.display().to_string()))
            .count()
    };
    assert_eq!(about_dev("the disk under the database is full"), 1, "{log}");
    assert_eq!(
        about_dev("writes to the database succeed again"),
        1,
        "{log}"
    );
    // The request log line says what the client received.
    let refused_lines = log
        .lines()
        .filter(|l| l.contains(" request ") && l.contains("status=507"))
        .count();
    assert_eq!(refused_lines, 3, "{log}");
    drop(served);
    assert_audit_verifies(app.dir.path()).await;
    drop(app);
    drop(tmpfs);
}

/// A write transaction that the database ends by itself half-way (SQLite's `RAISE(ROLLBACK)`
/// in a trigger ends it as a full disk does; PostgreSQL aborts it) leaves no connection that
/// refuses the next transaction: once the cause is gone, every write succeeds again.
#[tokio::test]
async fn a_transaction_ended_half_way_leaves_every_connection_usable() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "l", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let (fail, unfail) = if on_postgres() {
        (
            "CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'no room'; END $$; \
             CREATE TRIGGER fail_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION fail_audit()",
            "DROP TRIGGER fail_audit ON audit",
        )
    } else {
        (
            "CREATE TRIGGER fail_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ROLLBACK, 'no room'); END",
            "DROP TRIGGER fail_audit",
        )
    };
    exec_sql(t.dir.path(), "dev", fail).await;
    // More failures than the pool has connections, so that each may be left behind.
    for serial in 2..8 {
        let refused = t
            .as_("alice")
            .post("dev/app", state_doc(serial, "l", ""))
            .send()
            .await;
        assert_status(&refused, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        t.versions("dev", "app").await.len(),
        1,
        "nothing was written"
    );
    exec_sql(t.dir.path(), "dev", unfail).await;
    for serial in 2..12 {
        let id = format!("l-{serial}");
        assert_status(
            &t.as_("alice").lock("dev/app").id(&id).send().await,
            StatusCode::OK,
        );
        let body = state_doc(serial, "l", "");
        assert_status(
            &t.as_("alice")
                .post("dev/app", body)
                .lock_id(&id)
                .send()
                .await,
            StatusCode::OK,
        );
        assert_status(
            &t.as_("alice").unlock("dev/app").id(&id).send().await,
            StatusCode::OK,
        );
    }
    assert_eq!(t.versions("dev", "app").await.len(), 11);
}

/// A read answered, then refused because its audit record could not be written: the request
/// log line says 503, as the client saw it, not the 200 the answer would have had.
#[tokio::test]
async fn the_request_log_line_says_the_status_the_client_received() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "l", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    let served = t.serve_process().await;
    break_audit_writes(t.dir.path(), "dev").await;
    let refused = t.as_("alice").on(&served.base).get("dev/app").send().await;
    assert_status(&refused, StatusCode::SERVICE_UNAVAILABLE);
    let log = std::fs::read_to_string(&served.log).expect("the server's log");
    let reads: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" request ") && l.contains("action=state:read"))
        .collect();
    assert_eq!(reads.len(), 1, "{log}");
    assert!(reads[0].contains("status=503"), "{log}");
}
