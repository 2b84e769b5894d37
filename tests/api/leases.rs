//! Lock leases: a lock whose holder has neither written nor renewed for the environment's
//! `lock_lease` may be taken over by another writer's LOCK, recorded; the old holder can then
//! write and unlock nothing. Idle time is set in the database rather than waited for.

use reqwest::StatusCode;

use crate::changes::{protected_config, refusal, Issuer, Protected};
use crate::helpers::*;

/// [`CONFIG`] with a five-minute lease in dev (staging keeps none).
fn leased_config() -> String {
    CONFIG.replace(
        "max_state_size = \"64KiB\"",
        "max_state_size = \"64KiB\"\n  lock_lease     = \"5m\"",
    )
}

/// Makes the holder of `state`'s lock in `env` look idle since `since`.
async fn idle_since(t: &TestApp, env: &str, state: &str, since: &str) {
    exec_sql(
        t.dir.path(),
        env,
        &format!("UPDATE locks SET active_at = '{since}' WHERE state = '{state}'"),
    )
    .await;
}

/// Who holds `state`'s lock in `env` now, and under which ID.
async fn holder(t: &TestApp, env: &str, state: &str) -> Option<(String, String)> {
    t.app
        .stores
        .environment(env)
        .unwrap()
        .held_lock(state)
        .await
        .unwrap()
        .map(|l| (l.principal, l.lock_id))
}

const LONG_AGO: &str = "2020-01-01T00:00:00.000000Z";

#[tokio::test]
async fn a_lock_idle_past_its_lease_is_taken_over_and_the_old_holder_writes_nothing() {
    let t = spawn_app_with(&leased_config()).await;
    assert_status(
        &t.as_("alice").lock("dev/net").id("L1").send().await,
        StatusCode::OK,
    );
    let first = state_doc(1, "A", "");
    assert_status(
        &t.as_("alice")
            .post("dev/net", first.clone())
            .lock_id("L1")
            .send()
            .await,
        StatusCode::OK,
    );
    idle_since(&t, "dev", "net", LONG_AGO).await;

    assert_status(
        &t.as_("bob").lock("dev/net").id("L2").send().await,
        StatusCode::OK,
    );
    let taken = t.last_audit("dev").await;
    assert_eq!(
        (taken.action.as_str(), taken.lock_id.as_deref()),
        ("state:lock", Some("L2"))
    );
    assert_eq!(
        taken.reason.as_deref(),
        Some(format!("took over the lock of user:alice idle since {LONG_AGO} (lease 5m): lock L1 released").as_str())
    );
    assert!(taken
        .policy
        .unwrap()
        .ends_with("; lease of lock L1 ran out"));
    assert_eq!(
        holder(&t, "dev", "net").await,
        Some(("user:bob".into(), "L2".into()))
    );

    // The old holder, back: its write and its unlock are refused, and nothing changes.
    let late = t
        .as_("alice")
        .post("dev/net", state_doc(2, "A", ""))
        .lock_id("L1")
        .send()
        .await;
    assert_status(&late, StatusCode::LOCKED);
    let unlock = t.as_("alice").unlock("dev/net").id("L1").send().await;
    assert_status(&unlock, StatusCode::LOCKED);
    assert_eq!(t.versions("dev", "net").await.len(), 1);
    assert_eq!(t.stored("dev", "net").await, Some(first));
    assert_eq!(
        holder(&t, "dev", "net").await,
        Some(("user:bob".into(), "L2".into()))
    );

    // The taker writes and releases as any holder.
    assert_status(
        &t.as_("bob")
            .post("dev/net", state_doc(2, "A", ""))
            .lock_id("L2")
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("bob").unlock("dev/net").id("L2").send().await,
        StatusCode::OK,
    );
    assert_eq!(holder(&t, "dev", "net").await, None);
    assert_audit_verifies(t.dir.path()).await;
}

#[tokio::test]
async fn a_lock_within_its_lease_or_renewed_or_written_under_is_held() {
    let t = spawn_app_with(&leased_config()).await;
    assert_status(
        &t.as_("alice").lock("dev/net").id("L1").send().await,
        StatusCode::OK,
    );
    let recent = (chrono::Utc::now() - chrono::Duration::minutes(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    idle_since(&t, "dev", "net", &recent).await;
    let within = refusal(t.as_("bob").lock("dev/net").id("L2").send().await).await;
    assert!(within.starts_with("L1 held by user:alice"), "{within}");

    // A LOCK retry by the holder renews the lease.
    idle_since(&t, "dev", "net", LONG_AGO).await;
    assert_status(
        &t.as_("alice").lock("dev/net").id("L1").send().await,
        StatusCode::OK,
    );
    let renewed = refusal(t.as_("bob").lock("dev/net").id("L2").send().await).await;
    assert!(renewed.starts_with("L1 held by user:alice"), "{renewed}");

    // So does a write under the lock.
    idle_since(&t, "dev", "net", LONG_AGO).await;
    assert_status(
        &t.as_("alice")
            .post("dev/net", state_doc(1, "A", ""))
            .lock_id("L1")
            .send()
            .await,
        StatusCode::OK,
    );
    let written = refusal(t.as_("bob").lock("dev/net").id("L2").send().await).await;
    assert!(written.starts_with("L1 held by user:alice"), "{written}");

    // A reader may not take over, however idle the lock.
    idle_since(&t, "dev", "net", LONG_AGO).await;
    let eve = t.as_("eve").lock("dev/net").id("L3").send().await;
    assert_ne!(eve.status(), StatusCode::OK);
    assert_eq!(
        holder(&t, "dev", "net").await,
        Some(("user:alice".into(), "L1".into()))
    );
}

#[tokio::test]
async fn without_a_lease_a_lock_is_never_taken_over() {
    let t = spawn_app_with(&leased_config()).await;
    assert_status(
        &t.as_("pat").lock("staging/net").id("L1").send().await,
        StatusCode::OK,
    );
    idle_since(&t, "staging", "net", LONG_AGO).await;
    let held = refusal(
        t.as_("ci-staging")
            .lock("staging/net")
            .id("L2")
            .send()
            .await,
    )
    .await;
    assert!(held.starts_with("L1 held by user:pat"), "{held}");
    assert_eq!(
        holder(&t, "staging", "net").await,
        Some(("user:pat".into(), "L1".into()))
    );
}

#[tokio::test]
async fn in_a_protected_environment_the_taker_needs_its_own_grant() {
    let issuer = Issuer::new();
    let config = protected_config(&issuer.jwks_path(), "24h").replace(
        "pipeline { branches = [\"main\"] }",
        "pipeline { branches = [\"main\"] }\n  lock_lease = \"5m\"",
    );
    assert!(config.contains("lock_lease"));
    let p = Protected {
        t: spawn_app_with(&config).await,
        issuer,
    };
    let main = p.issuer.token("main", |_| {});
    let first = p.approved("network").await;
    let path = format!("prod/network?change={first}");
    assert_status(
        &p.pipeline(&main).lock(&path).id("L1").send().await,
        StatusCode::OK,
    );
    let post = p
        .pipeline(&main)
        .post(&path, state_doc(1, "P", ""))
        .lock_id("L1")
        .send()
        .await;
    assert_status(&post, StatusCode::OK);
    idle_since(&p.t, "prod", "network", LONG_AGO).await;

    // No change named, or the change the idle lock was taken for (already written under):
    // refused, and the lock stays.
    let bare = refusal(p.pipeline(&main).lock("prod/network").id("L2").send().await).await;
    assert!(!bare.starts_with("L1 held by"), "{bare}");
    assert_eq!(
        holder(&p.t, "prod", "network").await,
        Some(("service:ci-prod".into(), "L1".into()))
    );

    // The change the idle lock has already written for: its apply used it up, so a new lock
    // for it is refused at the lock, and nothing changes.
    let same = refusal(p.pipeline(&main).lock(&path).id("L2").send().await).await;
    assert!(
        same.starts_with(&format!(
            "change {first} was written under lock L1 of service:ci-prod"
        )),
        "{same}"
    );
    assert_eq!(
        holder(&p.t, "prod", "network").await,
        Some(("service:ci-prod".into(), "L1".into()))
    );
    let open = p.client("bob").change(&first).await.unwrap();
    assert_eq!(open.applied_version, None);

    // Its own approved change: taken over.
    let second = p.approved("network").await;
    let path = format!("prod/network?change={second}");
    assert_status(
        &p.pipeline(&main).lock(&path).id("L2").send().await,
        StatusCode::OK,
    );
    let taken = p.t.last_audit("prod").await;
    assert!(
        taken
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("took over the lock of service:ci-prod")),
        "{:?}",
        taken.reason
    );
    assert_eq!(taken.change.as_deref(), Some(second.as_str()));
    assert!(taken
        .reason
        .unwrap()
        .ends_with(&format!("; change {first} applied as version 1")));
    assert_eq!(
        holder(&p.t, "prod", "network").await,
        Some(("service:ci-prod".into(), "L2".into()))
    );
    // The old lock's change had a version written under it: it is used up.
    let used = p.client("bob").change(&first).await.unwrap();
    assert_eq!(used.applied_version, Some(1));
}

#[tokio::test]
async fn state_locks_lists_held_locks_and_whose_lease_ran_out() {
    let t = spawn_app_with(&leased_config()).await;
    for (path, who) in [("dev/net", "alice"), ("staging/net", "pat")] {
        assert_status(
            &t.as_(who).post(path, state_doc(1, "A", "")).send().await,
            StatusCode::OK,
        );
        assert_status(&t.as_(who).lock(path).id("L1").send().await, StatusCode::OK);
        let env = path.split('/').next().unwrap();
        idle_since(&t, env, "net", LONG_AGO).await;
    }
    let base = t.base();
    let run = |args: &[&str]| {
        let mut all = vec!["state", "locks"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &base, "--token", t.token("pat")]);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(all)
            .output()
    };
    let json = run(&["--format", "json"]).await.unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["environment"].as_str().unwrap(),
                r["holder"].as_str().unwrap(),
                r["active_at"].as_str().unwrap(),
                r["lease_ran_out"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("dev", "user:alice", LONG_AGO, true),
            ("staging", "user:pat", LONG_AGO, false)
        ]
    );
    assert!(rows[0]["idle_seconds"].as_i64().unwrap() > 86400);

    let human = run(&["--env", "dev"]).await.unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("dev/net"), "{text}");
    assert!(
        text.contains("RAN OUT (5m00s): may be taken over"),
        "{text}"
    );
    assert!(!text.contains("staging/net"), "{text}");
}

#[tokio::test]
async fn state_unlock_shows_a_lock_and_releases_it_only_by_its_id_for_who_may_force_unlock() {
    let t = spawn_app().await;
    assert_status(
        &t.as_("alice")
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_status(
        &t.as_("alice").lock("dev/app").id("L1").send().await,
        StatusCode::OK,
    );
    let base = t.base();
    let unlock = |who: &str, args: &[&str]| {
        let mut all = vec!["state", "unlock", "dev/app"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--server", &base, "--token", t.token(who)]);
        tokio::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(all)
            .output()
    };
    let held = || holder(&t, "dev", "app");

    // Without --id: the lock is shown, nothing is released.
    let shown = unlock("bob", &[]).await.unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert_eq!(shown.status.code(), Some(1), "{text}");
    assert!(
        text.contains("user:alice") && text.contains("--id L1"),
        "{text}"
    );
    assert!(held().await.is_some());
    // Another lock's ID, and a caller without state:force-unlock: refused, still held.
    let wrong = unlock("bob", &["--id", "L0"]).await.unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("is not the lock held"));
    let eve = unlock("eve", &["--id", "L1"]).await.unwrap();
    assert_eq!(eve.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&eve.stderr).contains("may not force-unlock dev"));
    assert!(held().await.is_some());

    let released = unlock("bob", &["--id", "L1"]).await.unwrap();
    assert_eq!(
        released.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&released.stderr)
    );
    assert!(held().await.is_none());
    let record = t.newest_audit("dev", |r| r.status == Some(200)).await;
    assert_eq!(
        (record.action.as_str(), record.principal.as_deref()),
        ("state:force-unlock", Some("user:bob"))
    );
}
