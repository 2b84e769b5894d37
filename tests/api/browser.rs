//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against the real server on port 0. Each step leaves a screenshot in
//! `target/screenshots/` for a person to look at.
//!
//! Without Chromium or chromedriver these tests print `SKIPPED: chromium not found` and
//! return; with `BULKHEAD_REQUIRE_BROWSER=1` (set by CI) a missing browser fails them instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;

use crate::changes::spawn_protected;
use crate::helpers::*;

/// Where a program is: `$NAME` when set, else the first of `candidates` that exists.
fn program(variable: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Some(PathBuf::from(path));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// A headless Chromium of its own, and the chromedriver that drives it.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    test: &'static str,
    shots: u32,
}

impl Browser {
    /// Starts one, or says loudly why it cannot.
    async fn launch(test: &'static str) -> Option<Browser> {
        let chromium = program(
            "BULKHEAD_CHROMIUM",
            &[
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ],
        );
        let driver = program("BULKHEAD_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            if std::env::var_os("BULKHEAD_REQUIRE_BROWSER").is_some() {
                panic!("chromium or chromedriver not found, and BULKHEAD_REQUIRE_BROWSER is set");
            }
            println!("SKIPPED: chromium not found");
            eprintln!(
                "SKIPPED: chromium not found (install Debian's chromium and chromium-driver)"
            );
            return None;
        };
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        // chromedriver speaks plain HTTP on loopback, but the client wants a TLS provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::rustls()
                .unwrap()
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("chromedriver at {url} did not start a browser: {e}")
                }
                // chromedriver is still starting: a bounded wait for an outside process.
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Some(Browser {
            client,
            _driver: child,
            _profile: profile,
            test,
            shots: 0,
        })
    }

    /// Saves what the browser shows as `target/screenshots/<test>-<n>-<step>.png`.
    async fn screenshot(&mut self, step: &str) -> PathBuf {
        let png = self.client.screenshot().await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        self.shots += 1;
        let path = dir.join(format!("{}-{}-{step}.png", self.test, self.shots));
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn text(&self, css: &str) -> String {
        let found = self.client.find(Locator::Css(css)).await;
        let source = match &found {
            Ok(_) => String::new(),
            Err(_) => self.client.source().await.unwrap_or_default(),
        };
        found
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}\n{source}"))
            .text()
            .await
            .unwrap()
    }

    /// Clicks something that leads to another page, and waits until the browser has left
    /// this one: a click returns before the next page is there, and reading at once could
    /// read the old page.
    async fn click(&self, css: &str) {
        let page = self.client.find(Locator::Css("html")).await.unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` to click: {e}"))
            .click()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while page.tag_name().await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "clicking `{css}` did not lead to another page"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in through the form, as a person would.
    async fn sign_in(&self, base: &str, token: &str) {
        self.client.goto(&format!("{base}/ui/login")).await.unwrap();
        self.client
            .find(Locator::Css("input[name=token]"))
            .await
            .unwrap()
            .send_keys(token)
            .await
            .unwrap();
        self.click("form button[type=submit]").await;
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_approves_in_a_browser_and_the_author_is_refused() {
    let Some(mut browser) = Browser::launch("approval").await else {
        return;
    };
    let p = spawn_protected("24h").await;
    let base = p.t.base();
    let id = p.propose("pat", "prod", "network").await;

    // The author signs in and finds the change waiting on the environments page.
    browser.sign_in(&base, p.t.token("pat")).await;
    assert_eq!(browser.text("h1").await, "Environments");
    assert_eq!(browser.text("nav .who strong").await, "user:pat");
    assert!(browser.text("table").await.contains(&id));
    browser.screenshot("environments").await;

    // The author's own approval: the server's refusal, on the change's page.
    browser.click(&format!("a[href='/ui/changes/{id}']")).await;
    assert!(browser.text("h2").await.contains("1 to destroy"));
    browser.screenshot("change").await;
    browser.click("button.approve").await;
    let refusal = browser.text(".refusal[role=alert]").await;
    assert!(
        refusal.contains("its author can never approve it"),
        "{refusal}"
    );
    browser.screenshot("self-approval-refused").await;
    assert!(p
        .client("pat")
        .change(&id)
        .await
        .unwrap()
        .approvals
        .is_empty());

    // Signs out; another owner signs in and approves.
    browser.click("nav button.link").await;
    assert_eq!(browser.text("h1").await, "Sign in to bulkhead");
    browser.sign_in(&base, p.t.token("quinn")).await;
    browser
        .client
        .goto(&format!("{base}/ui/changes/{id}"))
        .await
        .unwrap();
    browser.click("button.approve").await;
    assert_eq!(browser.text(".notice").await, format!("You approved {id}."));
    assert!(browser.text("h1").await.contains("approved"));
    browser.screenshot("approved").await;
    let change = p.client("pat").change(&id).await.unwrap();
    assert_eq!(change.approvals.len(), 1);
    assert_eq!(change.approvals[0].approver, "user:quinn");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diff_page_masks_secrets_and_shows_markup_as_text_in_a_browser() {
    let Some(mut browser) = Browser::launch("diff").await else {
        return;
    };
    let t = spawn_app().await;
    let doc = |serial: i64, size: &str, password: &str| {
        format!(
            r#"{{"version":4,"serial":{serial},"lineage":"L","resources":[
              {{"mode":"managed","type":"aws_db_instance","name":"main","instances":[{{"attributes":{{"size":"{size}","password":"{password}"}},"sensitive_attributes":[[{{"type":"get_attr","value":"password"}}]]}}]}},
              {{"mode":"managed","type":"terraform_data","name":"<script>document.title='owned'</script>","instances":[{{"attributes":{{"input":"<b>{size}</b>"}}}}]}}]}}"#
        )
        .into_bytes()
    };
    for (serial, size, password) in [(1, "small", "hunter2"), (2, "large", "swordfish")] {
        let resp = t
            .as_("alice")
            .post("dev/app/db", doc(serial, size, password))
            .send()
            .await;
        assert_status(&resp, StatusCode::OK);
    }
    // Another state whose serial jumped: its health says it needs a look.
    for serial in [1, 4] {
        let resp = t
            .as_("alice")
            .post("dev/net", state_doc(serial, "N", ""))
            .send()
            .await;
        assert_status(&resp, StatusCode::OK);
    }
    browser.sign_in(&t.base(), t.token("alice")).await;
    browser.click("a[href='/ui/environments/dev']").await;
    let states = browser.text("table").await;
    assert!(states.contains("app/db"), "{states}");
    assert!(
        states.contains("needs a look")
            && states.contains("serial jumped past writes made elsewhere"),
        "{states}"
    );
    browser.screenshot("states").await;
    browser.click("a[href='/ui/history/dev/app/db']").await;
    // The two newest versions are chosen; comparing them shows what changed.
    browser.click("form.filters button").await;
    let diff = browser.text("table.diff").await;
    assert!(diff.contains("aws_db_instance.main"), "{diff}");
    assert!(diff.contains("small") && diff.contains("large"), "{diff}");
    assert!(diff.contains("(sensitive)"), "{diff}");
    // The markup of a resource name and a value is text on the page, and never runs.
    assert!(diff.contains("<b>large</b>"), "{diff}");
    let source = browser.client.source().await.unwrap();
    for secret in ["hunter2", "swordfish"] {
        assert!(!source.contains(secret), "{secret} reached the page");
    }
    assert!(browser
        .client
        .find_all(Locator::Css("main script, main b"))
        .await
        .unwrap()
        .is_empty());
    assert!(!browser.client.title().await.unwrap().contains("owned"));
    browser.screenshot("diff").await;
    // The audit log, filtered as the CLI filters it.
    browser
        .client
        .goto(&format!("{}/ui/audit?env=dev&action=state:write", t.base()))
        .await
        .unwrap();
    let log = browser.text("table").await;
    assert!(
        log.contains("state:write") && log.contains("user:alice"),
        "{log}"
    );
    browser.screenshot("audit").await;
    browser.close().await;
}
