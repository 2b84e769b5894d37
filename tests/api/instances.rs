//! Several server instances on one storage (PostgreSQL in the PostgreSQL run, the same SQLite
//! files otherwise) answer as one: exclusive locks, linear versions, nothing half-written
//! when an instance dies mid-request.

use std::time::Instant;

use tokio::io::AsyncWriteExt;

use crate::helpers::*;

const CLIENTS: usize = 32;
const ROUNDS: usize = 6;

/// What one client saw of one granted lock.
struct Hold {
    granted: Instant,
    released: Instant,
    wrote: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_grant_each_lock_once_and_keep_versions_linear() {
    let t = std::sync::Arc::new(spawn_app().await);
    let other = t.serve_process().await;
    let bases = [t.base(), other.base.clone()];

    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let t = t.clone();
        let base = bases[client % 2].clone();
        clients.push(tokio::spawn(async move {
            let who = if client % 3 == 0 { "bob" } else { "alice" };
            let mut holds = Vec::new();
            for round in 0..ROUNDS {
                let id = format!("c{client}-r{round}");
                let r = t.as_(who).on(&base).lock("dev/race").id(&id).send().await;
                match r.status().as_u16() {
                    423 => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                    200 => {}
                    other => panic!("LOCK answered {other}: {}", r.text().await.unwrap()),
                }
                let granted = Instant::now();
                // Read, then write the next serial: a second holder would read the same one.
                let current = t.as_(who).on(&base).get("dev/race").send().await;
                let serial = match current.status().as_u16() {
                    204 => 0,
                    200 => {
                        let doc: serde_json::Value = current.json().await.unwrap();
                        doc["serial"].as_i64().unwrap()
                    }
                    other => panic!("GET answered {other}"),
                };
                let write = t
                    .as_(who)
                    .on(&base)
                    .post("dev/race", state_doc(serial + 1, "race", ""))
                    .lock_id(&id)
                    .send()
                    .await;
                let wrote = write.status() == 200;
                assert!(
                    wrote || write.status() == 409,
                    "POST answered {}",
                    write.status()
                );
                let released = Instant::now();
                let r = t.as_(who).on(&base).unlock("dev/race").id(&id).send().await;
                assert_eq!(r.status(), 200, "UNLOCK of a held lock");
                holds.push(Hold {
                    granted,
                    released,
                    wrote,
                });
            }
            holds
        }));
    }
    let mut holds = Vec::new();
    for c in clients {
        holds.extend(c.await.expect("client finished"));
    }

    // Zero double grants: no two holds overlap.
    holds.sort_by_key(|h| h.granted);
    for pair in holds.windows(2) {
        assert!(
            pair[1].granted >= pair[0].released,
            "two clients held the lock at once"
        );
    }
    let writes = holds.iter().filter(|h| h.wrote).count();
    assert!(writes > 0, "no client ever got the lock");
    assert_eq!(writes, holds.len(), "every holder's write was accepted");

    // Zero lost or duplicated versions: 1..=writes, each serial one more than the last.
    let versions = t.versions("dev", "race").await;
    assert_eq!(versions.len(), writes);
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v.version, i as i64 + 1);
        assert_eq!(v.serial, Some(i as i64 + 1));
    }
    assert!(t
        .app
        .stores
        .environment("dev")
        .unwrap()
        .held_lock("race")
        .await
        .unwrap()
        .is_none());
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_write_leaves_nothing_half_written() {
    let t = spawn_app().await;
    assert_eq!(
        t.as_("alice")
            .post("dev/big", state_doc(1, "L", ""))
            .send()
            .await
            .status(),
        200
    );
    let mut other = t.serve_process().await;

    // Half of a 1 MB write reaches the other instance; then it dies.
    let body = state_doc(2, "L", &format!(",\"pad\":\"{}\"", "x".repeat(1 << 20)));
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("alice:{}", t.token("alice")),
    );
    let addr = other.base.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/state/dev/big HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body[..body.len() / 2]).await.unwrap();
    socket.flush().await.unwrap();
    other.child.start_kill().unwrap();
    other.child.wait().await.unwrap();

    let versions = t.versions("dev", "big").await;
    assert_eq!(versions.len(), 1, "the interrupted write left no version");
    assert_eq!(t.stored("dev", "big").await, Some(state_doc(1, "L", "")));
    // The surviving instance goes on writing.
    assert_eq!(
        t.as_("alice")
            .post("dev/big", state_doc(2, "L", ""))
            .send()
            .await
            .status(),
        200
    );
    assert_eq!(t.versions("dev", "big").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_cut_off_mid_flight_leave_the_server_working() {
    let t = std::sync::Arc::new(spawn_app().await);
    // Clients that hang up after a few hundred microseconds, at every point of a request.
    let mut clients = Vec::new();
    for client in 0..16u64 {
        let t = t.clone();
        clients.push(tokio::spawn(async move {
            let impatient = reqwest::Client::new();
            for round in 0..40u64 {
                let wait = std::time::Duration::from_micros((client * 37 + round * 101) % 3000);
                let path = format!("dev/cut-{}", client % 4);
                let id = format!("c{client}-{round}");
                for (method, url, body) in [
                    (
                        "LOCK",
                        t.url(&path),
                        lock_info(&id, "OperationTypeApply").into_bytes(),
                    ),
                    (
                        "POST",
                        t.url(&format!("{path}?ID={id}")),
                        state_doc(round as i64, "L", ""),
                    ),
                    (
                        "UNLOCK",
                        t.url(&path),
                        lock_info(&id, "OperationTypeApply").into_bytes(),
                    ),
                ] {
                    let _ = impatient
                        .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url)
                        .basic_auth("alice", Some(t.token("alice")))
                        .body(body)
                        .timeout(wait)
                        .send()
                        .await;
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    // Every kind of request still works, promptly.
    let patient = async {
        let r = t
            .as_("alice")
            .post("dev/after", state_doc(1, "L", ""))
            .send()
            .await;
        assert_status(&r, reqwest::StatusCode::OK);
        let r = t.as_("alice").lock("dev/after").id("A").send().await;
        assert_status(&r, reqwest::StatusCode::OK);
        let r = t.as_("alice").get("dev/after").send().await;
        assert_status(&r, reqwest::StatusCode::OK);
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), patient)
        .await
        .expect("the server answers after clients hung up mid-request");
}

/// What an instance keeps between requests (the audit chain's head, a state's newest content,
/// token rows) never hides what another instance wrote meanwhile: each read below follows a
/// write, and a record, by the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_instance_remembers_never_hides_another_instances_writes() {
    let t = spawn_app().await;
    let other = t.serve_process().await;
    let bases = [t.base(), other.base.clone()];
    for serial in 1..=4 {
        let doc = state_doc(serial, "L", "");
        let writer = &bases[serial as usize % 2];
        let r = t
            .as_("alice")
            .on(writer)
            .post("dev/app", doc.clone())
            .send()
            .await;
        assert_eq!(r.status().as_u16(), 200, "POST on {writer}");
        for base in &bases {
            let r = t.as_("alice").on(base).get("dev/app").send().await;
            assert_eq!(r.status().as_u16(), 200, "GET on {base}");
            assert_eq!(
                r.bytes().await.unwrap().to_vec(),
                doc,
                "serial {serial}: {base} served an older version"
            );
        }
    }
    assert_eq!(
        t.read_versions("dev").await,
        [1, 1, 2, 2, 3, 3, 4, 4].map(Some),
        "every read is recorded once, naming the version it served"
    );
    assert_audit_verifies(t.dir.path()).await;
}

/// Repeated reads of an unchanged state are answered from memory; once another instance has
/// written, the next read finds out when its record is refused as stale, and serves the new
/// version, recording only the read it answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_from_memory_gives_way_to_another_instances_write() {
    let t = spawn_app().await;
    let other = t.serve_process().await;
    let (v1, v2) = (state_doc(1, "L", ""), state_doc(2, "L", ""));
    assert_eq!(
        t.as_("alice")
            .post("dev/app", v1.clone())
            .send()
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        let r = t.as_("alice").get("dev/app").send().await;
        assert_eq!(r.bytes().await.unwrap().to_vec(), v1);
    }
    let r = t
        .as_("bob")
        .on(&other.base)
        .post("dev/app", v2.clone())
        .send()
        .await;
    assert_eq!(r.status().as_u16(), 200);
    for _ in 0..2 {
        let r = t.as_("alice").get("dev/app").send().await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.bytes().await.unwrap().to_vec(),
            v2,
            "an older version was served"
        );
    }
    assert_eq!(t.read_versions("dev").await, [1, 1, 1, 2, 2].map(Some));
}
