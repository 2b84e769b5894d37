//! Notifications: `notify` blocks told of changes, refusals and break-glass through the audit
//! log as an outbox, checked against receivers on loopback that collect what they are sent,
//! answer as the test says (or never), and verify the signature as a receiver would.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use bulkhead::client::{Client, NewChange};
use bulkhead::store::notify::DeliveryRow;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;

use crate::changes::{protected_config, Issuer, Protected, PLAN};
use crate::helpers::*;

const SECRET: &str = "a-receiver-secret";

/// What a receiver was sent.
#[derive(Clone, Debug)]
struct Got {
    headers: HeaderMap,
    body: Vec<u8>,
    /// What it answered (0: it never did).
    answered: u16,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    /// Whether its signature is the HMAC-SHA256 of `timestamp.body` under `secret`, as the
    /// README tells a receiver to check it.
    fn signed_with(&self, secret: &str) -> bool {
        let timestamp = self.header("x-bulkhead-timestamp");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        self.header("x-bulkhead-signature") == expected
    }
}

#[derive(Default)]
struct Inbox {
    got: Vec<Got>,
    /// What to answer next, in order; then `otherwise`.
    script: VecDeque<u16>,
    otherwise: u16,
}

/// A receiver on 127.0.0.1: answers 200 unless told otherwise; 0 means never answer.
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn take(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> AxumStatus {
    let answer = {
        let mut inbox = inbox.lock().unwrap();
        let answer = inbox.script.pop_front().unwrap_or(inbox.otherwise);
        inbox.got.push(Got {
            headers,
            body: body.to_vec(),
            answered: answer,
        });
        answer
    };
    if answer == 0 {
        std::future::pending::<()>().await;
    }
    AxumStatus::from_u16(answer).unwrap()
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::answering(&[], 200).await
    }

    /// Answers `script` in order, then `otherwise`.
    async fn answering(script: &[u16], otherwise: u16) -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox {
            got: Vec::new(),
            script: script.iter().copied().collect(),
            otherwise,
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(take))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            url,
            inbox,
            _stop: stop,
        }
    }

    fn answer_from_now(&self, status: u16) {
        self.inbox.lock().unwrap().otherwise = status;
    }

    fn got(&self) -> Vec<Got> {
        self.inbox.lock().unwrap().got.clone()
    }

    /// What it was sent, once `done` holds of it (within a bounded wait: the server delivers
    /// on its own time).
    async fn until(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver was not sent {what}; it got: {:?}",
                got.iter()
                    .map(|g| String::from_utf8_lossy(&g.body).into_owned())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The events it was sent with a 2xx answer, by kind, once there are `n`.
    async fn delivered(&self, n: usize) -> Vec<Got> {
        let got = self
            .until(&format!("{n} events"), |got| {
                got.iter()
                    .filter(|g| (200..300).contains(&g.answered))
                    .count()
                    >= n
            })
            .await;
        got.into_iter()
            .filter(|g| (200..300).contains(&g.answered))
            .collect()
    }
}

fn kinds(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| g.json()["event"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A file holding [`SECRET`], in a folder of its own that lives as long as the test.
fn secret_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    (dir, path.display().to_string())
}

/// A json notify block named `name` to `url`, with `lines` more.
fn json_block(name: &str, url: &str, secret: &str, lines: &str) -> String {
    format!(
        "notify \"{name}\" {{\n  url = \"{url}\"\n  secret_file = \"{secret}\"\n  retry_first = \"50ms\"\n  retry_max = \"200ms\"\n  {lines}\n}}\n"
    )
}

/// The protected setup of the change tests with `blocks` added.
async fn spawn_notified(blocks: &str) -> Protected {
    let issuer = Issuer::new();
    let config = format!("{}{blocks}", protected_config(&issuer.jwks_path(), "24h"));
    let t = spawn_app_with(&config).await;
    Protected { t, issuer }
}

/// The protected setup with one json block `ops`, told of `events`, to `receiver`.
struct Notified {
    receiver: Receiver,
    p: Protected,
    _secret: tempfile::TempDir,
}

async fn spawn_with(receiver: Receiver, events: &[&str]) -> Notified {
    let (dir, secret) = secret_file();
    let events: Vec<String> = events.iter().map(|e| format!("\"{e}\"")).collect();
    let events = format!("events = [{}]", events.join(", "));
    let p = spawn_notified(&json_block("ops", &receiver.url, &secret, &events)).await;
    Notified {
        receiver,
        p,
        _secret: dir,
    }
}

async fn deliveries(t: &TestApp) -> Vec<DeliveryRow> {
    t.app.stores.system.deliveries().await.unwrap()
}

#[tokio::test]
async fn a_change_is_told_from_proposal_to_apply_in_signed_json_and_in_slack() {
    let ops = Receiver::start().await;
    let chat = Receiver::start().await;
    let (_keep, secret) = secret_file();
    let blocks = format!(
        "{}notify \"chat\" {{\n  url = \"{}\"\n  format = \"slack\"\n  events = [\"change.created\"]\n}}\n",
        json_block(
            "ops",
            &ops.url,
            &secret,
            "events = [\"change.created\", \"change.approved\", \"change.applied\"]\n  environments = [\"prod\"]"
        ),
        chat.url
    );
    let p = spawn_notified(&blocks).await;
    let new = NewChange {
        environment: "prod",
        state: "network",
        title: Some("<!channel> add a & b"),
        branch: Some("main"),
        commit: None,
    };
    let id = p
        .client("alice")
        .create_change(&new, PLAN.as_bytes().to_vec())
        .await
        .unwrap()
        .id;
    p.client("pat").decide(&id, "approve", None).await.unwrap();
    let main = p.issuer.token("main", |_| {});
    p.ci_apply(&id, &main, "L1", state_doc(1, "P", "")).await;

    let got = ops.delivered(3).await;
    assert_eq!(
        kinds(&got),
        ["change.created", "change.approved", "change.applied"]
    );
    for g in &got {
        assert!(g.signed_with(SECRET), "{:?}", g.headers);
        assert!(!g.signed_with("another secret"));
        assert_eq!(g.header("x-bulkhead-event"), g.json()["event"]);
        assert_eq!(g.header("x-bulkhead-event-id"), g.json()["id"]);
        assert_eq!(g.header("content-type"), "application/json");
    }
    let created = got[0].json();
    assert_eq!(created["schema"], 1);
    assert_eq!(created["environment"], "prod");
    assert_eq!(created["owner"], "team:platform");
    assert_eq!(created["state"], "network");
    assert_eq!(created["principal"], "user:alice");
    assert_eq!(created["change"], id.as_str());
    assert_eq!(created["approvers"], serde_json::json!(["team:platform"]));
    assert_eq!(created["required_approvals"], 1);
    let reason = created["reason"].as_str().unwrap();
    assert!(
        reason.contains("1 to add, 0 to change, 1 to destroy"),
        "{reason}"
    );
    assert!(
        created["id"].as_str().unwrap().starts_with("prod:"),
        "{created}"
    );
    assert_eq!(got[1].json()["principal"], "user:pat");
    let applied = got[2].json();
    assert_eq!(
        (
            &applied["change"],
            &applied["version"],
            &applied["principal"]
        ),
        (
            &serde_json::json!(id),
            &serde_json::json!(1),
            &serde_json::json!("service:ci-prod")
        )
    );
    // Nothing else: the lock, the write and the reads are no events it asked for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ops.got().len(), 3);

    let slack = chat.delivered(1).await[0].json();
    let text = slack["text"].as_str().unwrap();
    assert!(text.contains("&lt;!channel&gt; add a &amp; b"), "{text}");
    assert!(!text.contains("<!channel>"), "{text}");
    assert_eq!(slack["blocks"][0]["text"]["type"], "mrkdwn");
    assert!(chat.got()[0].headers.get("x-bulkhead-signature").is_none());

    let rows = deliveries(&p.t).await;
    let ops_rows: Vec<_> = rows.iter().filter(|r| r.notify == "ops").collect();
    assert_eq!(ops_rows.len(), 3, "{rows:?}");
    assert!(ops_rows
        .iter()
        .all(|r| r.outcome == "delivered" && r.status == Some(200) && r.attempt == 1));
}

#[tokio::test]
async fn a_refused_write_or_lock_in_a_protected_environment_is_told() {
    let Notified {
        receiver: ops,
        p,
        _secret,
    } = spawn_with(
        Receiver::start().await,
        &["state.refused", "state.force-unlocked"],
    )
    .await;
    let lock = p.t.as_("alice").lock("prod/network").id("A1").send().await;
    assert_status(&lock, StatusCode::LOCKED);
    let write =
        p.t.as_("alice")
            .post("prod/network", state_doc(1, "L", ""))
            .send()
            .await;
    assert_status(&write, StatusCode::FORBIDDEN);
    let got = ops.delivered(2).await;
    assert_eq!(kinds(&got), ["state.refused", "state.refused"]);
    let (lock, write) = (got[0].json(), got[1].json());
    assert_eq!(
        (&lock["action"], &write["action"]),
        (&"state:lock".into(), &"state:write".into())
    );
    assert_eq!(lock["decision"], "deny");
    assert_eq!(lock["principal"], "user:alice");
    assert_eq!(lock["environment"], "prod");
    assert_eq!(lock["status"], 423);
    let reason = lock["reason"].as_str().unwrap();
    assert!(reason.contains("user:alice"), "{reason}");
    assert!(got.iter().all(|g| g.signed_with(SECRET)));
}

#[tokio::test]
async fn a_receiver_that_fails_first_is_sent_the_event_again_and_both_attempts_are_recorded() {
    let Notified {
        receiver: ops,
        p,
        _secret,
    } = spawn_with(Receiver::answering(&[500], 200).await, &["change.created"]).await;
    let id = p.propose("alice", "prod", "network").await;
    let got = ops.until("two attempts", |got| got.len() >= 2).await;
    assert_eq!((got[0].answered, got[1].answered), (500, 200));
    assert_eq!(
        got[0].json()["id"],
        got[1].json()["id"],
        "the same event, by its id"
    );
    assert_eq!(got[1].json()["change"], id.as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = deliveries(&p.t).await;
        if rows.len() >= 2 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen: Vec<_> = rows
        .iter()
        .map(|r| (r.attempt, r.status, r.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [(1, Some(500), "failed"), (2, Some(200), "delivered")]
    );
    assert!(
        rows[0].error.as_deref().unwrap().contains("500"),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.event == got[0].json()["id"]));

    let metrics =
        p.t.client
            .get(format!("{}/metrics", p.t.base()))
            .bearer_auth(p.t.token("pat"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    for line in [
        r#"bulkhead_notify_attempts_total{notify="ops",outcome="failed"} 1"#,
        r#"bulkhead_notify_attempts_total{notify="ops",outcome="delivered"} 1"#,
        r#"bulkhead_notify_outbox_depth{notify="ops"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_neither_requests_nor_other_receivers() {
    let stuck = Receiver::answering(&[], 0).await;
    let ops = Receiver::start().await;
    let (_keep, secret) = secret_file();
    let events = "events = [\"change.created\", \"change.approved\"]\n  timeout = \"1m\"";
    let blocks = format!(
        "{}{}",
        json_block("stuck", &stuck.url, &secret, events),
        json_block("ops", &ops.url, &secret, events)
    );
    let p = spawn_notified(&blocks).await;
    let started = Instant::now();
    let id = p.propose("alice", "prod", "network").await;
    p.client("pat").decide(&id, "approve", None).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the requests took {:?}",
        started.elapsed()
    );
    let got = ops.delivered(2).await;
    assert_eq!(kinds(&got), ["change.created", "change.approved"]);
    // The stuck receiver holds its first event, and only its own.
    let stuck_got = stuck.until("its first event", |got| !got.is_empty()).await;
    assert_eq!(stuck_got.len(), 1);
    assert_eq!(kinds(&stuck_got), ["change.created"]);
}

#[tokio::test]
async fn a_request_that_rolled_back_sends_nothing() {
    let Notified {
        receiver: ops,
        p,
        _secret,
    } = spawn_with(
        Receiver::start().await,
        &["change.created", "change.approved", "change.cancelled"],
    )
    .await;
    let id = p.propose("alice", "prod", "network").await;
    ops.delivered(1).await;
    // The approval's record cannot be written: the approval is rolled back, and refused.
    break_audit_writes(p.t.dir.path(), "prod").await;
    let approve = p.client("pat").decide(&id, "approve", None).await;
    assert!(approve.is_err(), "{approve:?}");
    let drop = if on_postgres() {
        "DROP TRIGGER fail_audit ON audit"
    } else {
        "DROP TRIGGER fail_audit"
    };
    exec_sql(p.t.dir.path(), "prod", drop).await;
    let change = p.client("alice").change(&id).await.unwrap();
    assert!(change.approvals.is_empty());
    p.client("alice").decide(&id, "cancel", None).await.unwrap();
    let got = ops.delivered(2).await;
    assert_eq!(kinds(&got), ["change.created", "change.cancelled"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ops.got().len(),
        2,
        "nothing of the approval that rolled back"
    );
}

/// Appends `text` to the config in `dir`.
fn add_to_config(dir: &Path, text: &str) {
    let path = dir.join("bulkhead.hcl");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{config}\n{text}")).unwrap();
}

#[tokio::test]
async fn an_event_not_yet_delivered_is_sent_after_the_server_is_killed_and_started_again() {
    let ops = Receiver::answering(&[], 503).await;
    let (_keep, secret) = secret_file();
    // The test's own server has no notify block: only the `bulkhead serve` processes deliver.
    let p = spawn_notified("").await;
    add_to_config(
        p.t.dir.path(),
        &json_block("ops", &ops.url, &secret, "events = [\"change.created\"]"),
    );
    let first = p.t.serve_process().await;
    let alice = Client::new(&first.base, p.t.token("alice"));
    let new = NewChange {
        environment: "prod",
        state: "network",
        title: Some("add a"),
        branch: Some("main"),
        commit: None,
    };
    let id = alice
        .create_change(&new, PLAN.as_bytes().to_vec())
        .await
        .unwrap()
        .id;
    ops.until("a first attempt", |got| !got.is_empty()).await;
    let mut first = first;
    first.child.kill().await.unwrap();
    let _ = first.child.wait().await;
    let tried = ops.got().len();

    ops.answer_from_now(200);
    let _second = p.t.serve_process().await;
    let got = ops.delivered(1).await;
    assert_eq!(got[0].json()["change"], id.as_str());
    assert!(got[0].signed_with(SECRET));
    assert!(ops.got().len() > tried);
    // Every attempt of either process is recorded, numbered on across the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = deliveries(&p.t).await;
        if rows.iter().any(|r| r.outcome == "delivered") || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let last = rows.last().unwrap();
    assert_eq!(last.outcome, "delivered", "{rows:?}");
    assert!(rows[..rows.len() - 1]
        .iter()
        .all(|r| r.outcome == "failed" && r.status == Some(503)));
    let attempts: Vec<i64> = rows.iter().map(|r| r.attempt).collect();
    assert_eq!(
        attempts,
        (1..=rows.len() as i64).collect::<Vec<_>>(),
        "{rows:?}"
    );
}

#[test]
fn a_notify_block_with_problems_stops_the_server_naming_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = format!(
        "{CONFIG}\nnotify \"ops\" {{\n  url = \"ftp://hooks.example.com/x\"\n  events = [\"change.exploded\"]\n  environments = [\"qa\"]\n}}\n"
    );
    std::fs::write(dir.path().join("bulkhead.hcl"), &bad).unwrap();
    let serve = |dir: &Path| crate::cli::bulkhead(dir, &["serve", "--config", "bulkhead.hcl"]);
    let out = serve(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = CONFIG.lines().count() + 1;
    for (n, what) in [
        (
            line + 1,
            "a json receiver needs the secret its bodies are signed with",
        ),
        (line + 2, "url must be an http:// or https:// URL"),
        (
            line + 3,
            "unknown event \"change.exploded\": known events are change.created",
        ),
        (
            line + 4,
            "there is no environment \"qa\": known environments are dev, staging, prod",
        ),
    ] {
        let at = format!("bulkhead.hcl:{n}: notify \"ops\": {what}");
        assert!(err.contains(&at), "{at} in {err}");
    }

    // A secret file that is not there stops it before it listens, saying so.
    let missing = format!(
        "{CONFIG}\nnotify \"ops\" {{\n  url = \"https://hooks.example.com/x\"\n  secret_file = \"nowhere.secret\"\n}}\n"
    );
    std::fs::write(dir.path().join("bulkhead.hcl"), &missing).unwrap();
    let out = serve(dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notify \"ops\": cannot read its secret from the file"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}
