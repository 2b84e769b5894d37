//! Bounded resources: slow or idle clients are cut off by the server's timeouts, the connection
//! cap holds without starving `/healthz`, uploads stop at their limits, and text taken from
//! requests is capped before it reaches a record.

use std::time::Duration;

use base64::Engine;
use bulkhead::client::{ClientError, NewChange};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::changes::{protected_config, Issuer, Protected, PLAN};
use crate::helpers::*;

/// Longer than any timeout these tests set: reaching it means the server never acted.
const NEVER: Duration = Duration::from_secs(20);

/// What the server sends on `stream` until it closes it, or `None` if it is still open after
/// [`NEVER`].
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(NEVER, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

/// The head of the response the server sends on `stream`, or `None` if none came within
/// [`NEVER`].
async fn response_head(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    tokio::time::timeout(NEVER, async {
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

fn basic(t: &TestApp, who: &str) -> String {
    let pair = format!("{who}:{}", t.token(who));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed_after_header_timeout() {
    let t = spawn_app_with(&config_with_server("header_timeout = \"1s\"")).await;
    let mut slow = TcpStream::connect(t.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\nUser-Agent: slo")
        .await
        .unwrap();
    let sent = until_closed(&mut slow).await;
    let sent = sent.expect("the server closes a connection whose headers never end");
    assert!(!sent.contains("200 OK"), "{sent}");
    // The server is not harmed: a whole request on a new connection is answered.
    let ok = t
        .client
        .get(format!("{}/healthz", t.base()))
        .send()
        .await
        .unwrap();
    assert_status(&ok, StatusCode::OK);
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_with_408_recorded_and_nothing_stored() {
    let t = spawn_app_with(&config_with_server(
        "body_timeout = \"1s\"\n  idle_timeout = \"1s\"",
    ))
    .await;
    let mut stalled = TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/state/dev/app HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"version\":4,",
        basic(&t, "alice")
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    let answer = response_head(&mut stalled)
        .await
        .expect("the server answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.versions("dev", "app").await.is_empty());
    let record = t.last_audit("dev").await;
    assert_eq!(record.action, "state:write");
    assert_eq!(record.status, Some(408));
    assert_eq!(record.principal.as_deref(), Some("user:alice"));
    assert!(
        record
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("body_timeout"),
        "{record:?}"
    );
    // And the connection goes too, whatever the client does.
    assert!(until_closed(&mut stalled).await.is_some());
}

#[tokio::test]
async fn a_declared_length_with_no_body_is_answered_when_the_body_times_out() {
    // 30 MiB declared, under staging's 32 MiB limit, and never sent: the server neither holds
    // the connection forever nor falls over.
    let t = spawn_app_with(&config_with_server("body_timeout = \"1s\"")).await;
    let mut idle = TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/state/staging/app HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
        basic(&t, "pat"),
        30 * 1024 * 1024
    );
    idle.write_all(head.as_bytes()).await.unwrap();
    let answer = response_head(&mut idle).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t.versions("staging", "app").await.is_empty());
}

fn small_plan_config(issuer: &Issuer) -> String {
    protected_config(&issuer.jwks_path(), "24h").replacen(
        "environment \"prod\" {\n",
        "environment \"prod\" {\n  max_plan_size = \"64KiB\"\n",
        1,
    )
}

/// A valid plan of about `size` bytes.
fn plan_of(size: usize) -> Vec<u8> {
    let pad = "x".repeat(size);
    PLAN.replacen(
        "\"planned_values\":{}",
        &format!("\"planned_values\":{{\"pad\":\"{pad}\"}}"),
        1,
    )
    .into_bytes()
}

#[tokio::test]
async fn a_plan_over_max_plan_size_is_413_and_nothing_is_stored() {
    let issuer = Issuer::new();
    let p = Protected {
        t: spawn_app_with(&small_plan_config(&issuer)).await,
        issuer,
    };
    let new = NewChange {
        environment: "prod",
        state: "network",
        title: Some("too big"),
        branch: None,
        commit: None,
    };
    // With its length declared: refused before a byte of it is read.
    let refused = p
        .client("alice")
        .create_change(&new, plan_of(100 * 1024))
        .await
        .unwrap_err();
    match refused {
        ClientError::Refused { status, message } => {
            assert_eq!(status, 413);
            assert!(
                message.contains("over this environment's limit of 65536 bytes (max_plan_size)"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    // Chunked, with no length: refused once the bytes pass the limit.
    let plan = plan_of(100 * 1024);
    let mut chunked = Vec::new();
    for chunk in plan.chunks(8 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut stream = TcpStream::connect(p.t.addr).await.unwrap();
    let head = format!(
        "POST /v1/changes?environment=prod&state=network HTTP/1.1\r\nHost: bulkhead\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        basic(&p.t, "alice")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&chunked).await;
    let answer = response_head(&mut stream).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let listing = p.client("pat").changes(Some("prod"), None).await.unwrap();
    assert!(listing.changes.is_empty(), "{:?}", listing.changes);
    let creates: Vec<_> =
        p.t.audit(Some("prod"))
            .await
            .into_iter()
            .filter(|r| r.action == "change:create")
            .collect();
    assert_eq!(creates.len(), 2);
    assert!(creates.iter().all(|r| r.status == Some(413)), "{creates:?}");

    // Under the limit, the same plan is taken.
    let ok = p
        .client("alice")
        .create_change(&new, plan_of(60 * 1024))
        .await
        .unwrap();
    assert_eq!(ok.summary.add, vec!["terraform_data.a"]);
}

#[tokio::test]
async fn over_long_change_texts_are_refused_and_nothing_is_stored() {
    let issuer = Issuer::new();
    let p = Protected {
        t: spawn_app_with(&small_plan_config(&issuer)).await,
        issuer,
    };
    let title = "t".repeat(2000);
    let new = NewChange {
        environment: "prod",
        state: "network",
        title: Some(&title),
        branch: None,
        commit: None,
    };
    let refused = p
        .client("alice")
        .create_change(&new, PLAN.as_bytes().to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Refused { status: 400, message } if message.contains("the title is 2000 bytes, over the limit of 1024 bytes")),
        "{refused}"
    );
    // A rejection's reason, and a break-glass reason, likewise.
    let id = p.propose("alice", "prod", "network").await;
    let reason = "r".repeat(5000);
    let refused = p
        .client("pat")
        .decide(&id, "reject", Some(&reason))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Refused { status: 400, message } if message.contains("the reason is 5000 bytes, over the limit of 4096 bytes")),
        "{refused}"
    );
    let refused = p
        .client("pat")
        .open_breakglass("prod", &reason, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClientError::Refused { status: 400, .. }),
        "{refused}"
    );
    let listing = p.client("pat").changes(Some("prod"), None).await.unwrap();
    assert_eq!(listing.changes.len(), 1);
    assert_eq!(listing.changes[0].status.as_str(), "open");
    assert!(listing.breakglass.is_empty());
}

#[tokio::test]
async fn a_long_user_agent_is_capped_in_the_record() {
    let t = spawn_app().await;
    let agent = "A".repeat(100 * 1024);
    for who in ["alice", ""] {
        let mut req = t
            .client
            .get(t.url("dev/app"))
            .header("User-Agent", agent.as_str());
        if !who.is_empty() {
            req = req.basic_auth(who, Some(t.token(who)));
        }
        let resp = req.send().await.unwrap();
        let want = if who.is_empty() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::NO_CONTENT
        };
        assert_status(&resp, want);
        let record = t.last_audit("dev").await;
        let recorded = record.user_agent.expect("the agent is recorded");
        assert!(recorded.len() < 1100, "{}", recorded.len());
        assert!(recorded.starts_with("AAAA"));
        assert!(
            recorded.ends_with("…(truncated, 102400 bytes)"),
            "{}",
            &recorded[1000..]
        );
    }
}

#[tokio::test]
async fn an_over_long_lock_id_is_refused_and_long_lock_fields_are_stored_capped() {
    let t = spawn_app().await;
    // A reader's plan lock with a 60 KB ID (LOCK bodies are at most 64 KiB).
    let long_id = "L".repeat(60 * 1024);
    let resp = t
        .as_("alice")
        .lock("dev/app")
        .id(&long_id)
        .operation("OperationTypePlan")
        .send()
        .await;
    assert_status(&resp, StatusCode::BAD_REQUEST);
    let sentence = resp.text().await.unwrap();
    assert!(
        sentence.contains("the LockInfo's ID is 61440 bytes: bulkhead takes at most 1024"),
        "{sentence}"
    );
    let record = t.last_audit("dev").await;
    assert_eq!(record.status, Some(400));
    assert!(record.lock_id.is_none());
    // Nothing was locked: a writer locks at once.
    assert_status(
        &t.as_("bob").lock("dev/app").id("b-1").send().await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("bob").unlock("dev/app").id("b-1").send().await,
        StatusCode::OK,
    );

    // A 60 KB Who is kept to its first KiB in the lock and in what others are told.
    let info = serde_json::json!({
        "ID": "a-1", "Operation": "OperationTypeApply", "Info": "",
        "Who": "W".repeat(60 * 1024), "Version": "1.11.4", "Path": "",
    })
    .to_string();
    let resp = t
        .as_("alice")
        .request("LOCK", "dev/app")
        .body(info.into_bytes())
        .send()
        .await;
    assert_status(&resp, StatusCode::OK);
    let refused = t.as_("bob").lock("dev/app").id("b-2").send().await;
    assert_status(&refused, StatusCode::LOCKED);
    let holder: serde_json::Value = refused.json().await.unwrap();
    let who = holder["Who"].as_str().unwrap();
    assert!(who.len() < 1200, "{}", who.len());
    assert!(who.contains("…(truncated, 61440 bytes)"), "{who}");
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let t = spawn_app_with(&config_with_server(
        "max_connections = 1\n  header_timeout = \"30s\"\n  idle_timeout = \"30s\"",
    ))
    .await;
    let holder = TcpStream::connect(t.addr).await.unwrap();
    let mut waiting = TcpStream::connect(t.addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // While the one permitted connection is held, the second is not served. (This can only
    // pass wrongly, never fail wrongly: a served request would be a bug at any delay.)
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served over the cap: {early:?}");
    drop(holder);
    let answer = until_closed(&mut waiting)
        .await
        .expect("served once the first connection closes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn healthz_answers_while_more_than_max_connections_idle_connections_are_open() {
    let t = spawn_app_with(&config_with_server(
        "max_connections = 4\n  header_timeout = \"1s\"\n  idle_timeout = \"1s\"",
    ))
    .await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(t.addr).await.unwrap());
    }
    let health = t
        .client
        .get(format!("{}/healthz", t.base()))
        .timeout(NEVER)
        .send()
        .await
        .expect("/healthz answers while idle connections fill the cap");
    assert_status(&health, StatusCode::OK);
    // The idle ones were closed by the server, not by us.
    for stream in &mut idle {
        assert!(until_closed(stream).await.is_some());
    }
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_after_the_shorter_of_idle_and_header_timeout() {
    for lines in [
        "idle_timeout = \"1s\"\n  header_timeout = \"30s\"",
        "idle_timeout = \"30s\"\n  header_timeout = \"1s\"",
    ] {
        let t = spawn_app_with(&config_with_server(lines)).await;
        let mut conn = TcpStream::connect(t.addr).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: bulkhead\r\n\r\n")
            .await
            .unwrap();
        let sent = until_closed(&mut conn)
            .await
            .unwrap_or_else(|| panic!("with {lines}, an idle keep-alive connection is closed"));
        assert!(sent.starts_with("HTTP/1.1 200"), "{sent}");
    }
}

#[tokio::test]
async fn serve_raises_its_open_file_limit_and_serves_fewer_connections_than_it_allows() {
    let t = spawn_app().await;
    // Started with a soft limit of 256 under a hard limit of 512 (the default max_connections,
    // 1024, does not fit in either).
    let (_child, base, log) = serve_with_file_limit(t.dir.path(), 256, 512).await;
    let base = base.expect("the server announces its address");
    let health = t
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_status(&health, StatusCode::OK);
    let text = tokio::time::timeout(NEVER, async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("max_connections lowered") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| std::fs::read_to_string(&log).unwrap_or_default());
    assert!(text.contains("open-file limit raised"), "{text}");
    assert!(text.contains("from=256 to=512"), "{text}");
    assert!(text.contains("max_connections lowered"), "{text}");
    assert!(text.contains("open_file_limit=512"), "{text}");
}

#[tokio::test]
async fn more_environments_than_the_open_file_limit_holds_are_served_one_after_another() {
    let t = spawn_app().await;
    // Each environment's database holds several files open: 60 of them cannot all be open
    // under a limit of 160, so those nobody holds are closed to make room for the next.
    let file = t.dir.path().join("bulkhead.hcl");
    let mut config = std::fs::read_to_string(&file).unwrap();
    for i in 0..60 {
        config.push_str(&format!(
            "environment \"e{i:02}\" {{\n  owner = \"team:platform\"\n  read = [\"team:platform\"]\n  write = [\"team:platform\"]\n}}\n"
        ));
    }
    std::fs::write(&file, config).unwrap();
    let (child, base, log) = serve_with_file_limit(t.dir.path(), 160, 160).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let base = base.unwrap_or_else(|| panic!("the server listens: {text}"));
    for i in 0..60 {
        let path = format!("e{i:02}/app");
        let write = t
            .as_("pat")
            .on(&base)
            .post(&path, state_doc(1, "L", ""))
            .send()
            .await;
        assert_status(&write, StatusCode::OK);
        let read = t.as_("pat").on(&base).get(&path).send().await;
        assert_status(&read, StatusCode::OK);
    }
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_status(&ready, StatusCode::OK);
    let open = open_files(&child);
    assert!(open < 160, "{open} files open under a limit of 160");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("closed the environment's database"), "{text}");
    assert!(!text.contains("environment unavailable"), "{text}");
    assert!(!text.contains("too many open files"), "{text}");
    drop(child);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn ten_thousand_personal_environments_start_and_serve_under_a_limit_of_1024_open_files() {
    let members: Vec<String> = (0..10_000).map(|i| format!("\"u{i:05}\"")).collect();
    let config = format!(
        "{CONFIG}team \"many\" {{ members = [{}] }}\n\
         personal \"sandbox\" {{\n  members = [\"team:app\", \"team:many\"]\n}}\n",
        members.join(", ")
    );
    let t = spawn_app_with(&config).await;
    assert_eq!(t.app.config.environments.len(), 3 + 2 + 10_000);
    let (child, base, log) = serve_with_file_limit(t.dir.path(), 1024, 1024).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let base = base.unwrap_or_else(|| panic!("the server listens: {text}"));
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_status(&ready, StatusCode::OK);
    let write = t
        .as_("alice")
        .on(&base)
        .post("sandbox-alice/app", state_doc(1, "L", ""))
        .send()
        .await;
    assert_status(&write, StatusCode::OK);
    let refused = t
        .as_("bob")
        .on(&base)
        .get("sandbox-u09999/app")
        .send()
        .await;
    assert_status(&refused, StatusCode::FORBIDDEN);
    // Only the sandbox that was used holds files: the other ten thousand hold none.
    let open = open_files(&child);
    assert!(open < 256, "{open} files open");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("too many open files"), "{text}");
}

/// How many files the process holds open.
fn open_files(child: &tokio::process::Child) -> usize {
    let pid = child.id().expect("the server runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the server's open files, in /proc")
        .count()
}

/// Starts `bulkhead serve` in `dir` under an open-file limit, logging at info level; returns
/// the process, its address once it listens (none if it exits first) and its log.
async fn serve_with_file_limit(
    dir: &std::path::Path,
    soft: u64,
    hard: u64,
) -> (tokio::process::Child, Option<String>, std::path::PathBuf) {
    use tokio::io::AsyncBufReadExt;
    let log = dir.join("serve-limits.log");
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    serve
        .args([
            "serve",
            "--config",
            "bulkhead.hcl",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .env("BULKHEAD_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    // SAFETY: the closure only makes one system call, which is safe between fork and exec.
    unsafe {
        serve.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard));
    }
    let mut child = serve.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::io::BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap();
    let base = first
        .as_deref()
        .and_then(|line| line.strip_prefix("bulkhead listening on "))
        .map(str::to_string);
    (child, base, log)
}
