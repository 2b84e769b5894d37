//! The dashboard over plain HTTP: signing in and out, what ends a session, the refusals of
//! forms without the session's CSRF token or from another site (nothing stored), what each
//! principal may see, text from requests shown as text, and the audit records of it all.
//! The same pages in a real browser are in `browser.rs`.

use reqwest::header::{COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::{redirect, StatusCode};

use crate::changes::spawn_protected;
use crate::helpers::*;

/// A browser's session: its cookie and the CSRF token of its pages.
pub struct Browser {
    pub http: reqwest::Client,
    pub base: String,
    pub cookie: String,
    pub csrf: String,
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

/// Posts `token` to the sign-in form.
async fn post_sign_in(base: &str, token: &str) -> reqwest::Response {
    plain_client()
        .post(format!("{base}/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
}

/// Signs `who` in with its token.
pub async fn sign_in(t: &TestApp, who: &str) -> Browser {
    let resp = post_sign_in(&t.base(), t.token(who)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "sign-in of {who}");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let mut browser = Browser {
        http: plain_client(),
        base: t.base(),
        cookie,
        csrf: String::new(),
    };
    let page = browser.get("/ui").await;
    assert_eq!(page.0, StatusCode::OK, "{}", page.1);
    browser.csrf = csrf_of(&page.1);
    browser
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + 19;
    page[at..at + 64].to_string()
}

impl Browser {
    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_token_signs_in_to_a_session_cookie_that_is_http_only_strict_and_expiring() {
    let t = spawn_app().await;
    let resp = post_sign_in(&t.base(), t.token("alice")).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/ui");
    let set = resp.headers()[SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("bulkhead_session="), "{set}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    // Plain HTTP here: Secure is only set under TLS, where the browser would keep it.
    assert!(!set.contains("Secure"), "{set}");
    // The token itself is in no cookie and on no page.
    assert!(!set.contains(t.token("alice")));
    let sign_in = t
        .audit(None)
        .await
        .into_iter()
        .rfind(|r| r.action == "ui:sign-in")
        .expect("the sign-in is recorded");
    assert_eq!(sign_in.principal.as_deref(), Some("user:alice"));
    assert_eq!(sign_in.decision.as_str(), "allow");
}

#[tokio::test]
async fn bad_sign_ins_are_refused_with_a_sentence_and_recorded() {
    let t = spawn_app().await;
    let revoked = t.token("bob").to_string();
    let id = revoked.split('_').nth(1).unwrap();
    assert!(t
        .app
        .stores
        .system
        .revoke_token(id, &bulkhead::audit::Record::new("token:revoke"))
        .await
        .unwrap());
    for (token, says) in [
        ("", "paste a bulkhead token"),
        ("eyJhbGciOiJFUzI1NiJ9.e30.sig", "not a bulkhead token"),
        (
            &format!("bh_{}_{}", "0".repeat(16), "0".repeat(64)),
            "invalid or revoked token",
        ),
        (revoked.as_str(), "invalid or revoked token"),
        (&"x".repeat(100_000), "too large"),
    ] {
        let resp = post_sign_in(&t.base(), token).await;
        let status = resp.status();
        assert!(
            resp.headers().get(SET_COOKIE).is_none(),
            "no session for {says}"
        );
        let page = resp.text().await.unwrap();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{status} for {says}"
        );
        assert!(
            page.contains(says) || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{says}: {page}"
        );
    }
    let refused = t
        .audit(None)
        .await
        .into_iter()
        .filter(|r| r.action == "ui:sign-in" && r.decision.as_str() == "deny")
        .count();
    assert_eq!(refused, 5);
}

#[tokio::test]
async fn pages_without_a_live_session_send_the_browser_to_sign_in() {
    let t = spawn_app().await;
    let browser = sign_in(&t, "alice").await;
    let to_sign_in = |status: StatusCode| assert_eq!(status, StatusCode::SEE_OTHER);
    // No cookie, or one that is no session.
    let resp = plain_client()
        .get(format!("{}/ui", t.base()))
        .send()
        .await
        .unwrap();
    to_sign_in(resp.status());
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    let forged = Browser {
        cookie: format!("bulkhead_session={}", "a".repeat(64)),
        ..browser
    };
    to_sign_in(forged.get("/ui").await.0);
    let browser = Browser {
        cookie: sign_in(&t, "alice").await.cookie,
        ..forged
    };
    assert_eq!(browser.get("/ui").await.0, StatusCode::OK);
    // Past its expiry (8 hours by default).
    t.clock
        .advance(std::time::Duration::from_secs(8 * 3600 + 1));
    to_sign_in(browser.get("/ui").await.0);
}

#[tokio::test]
async fn revoking_the_token_ends_its_sessions_and_signing_out_ends_one() {
    let t = spawn_app().await;
    let alice = sign_in(&t, "alice").await;
    let other = sign_in(&t, "alice").await;
    assert_eq!(alice.get("/ui").await.0, StatusCode::OK);
    // Signing out needs the form's CSRF token, then ends that session only.
    let refused = alice.post("/ui/logout", &[("csrf", "wrong")]).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(alice.get("/ui").await.0, StatusCode::OK);
    let out = alice.post("/ui/logout", &[("csrf", &alice.csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(alice.get("/ui").await.0, StatusCode::SEE_OTHER);
    assert_eq!(other.get("/ui").await.0, StatusCode::OK);
    let id = t.token("alice").split('_').nth(1).unwrap().to_string();
    t.app
        .stores
        .system
        .revoke_token(&id, &bulkhead::audit::Record::new("token:revoke"))
        .await
        .unwrap();
    assert_eq!(other.get("/ui").await.0, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn every_page_shows_only_what_the_principal_may_read() {
    let t = spawn_app().await;
    let alice = sign_in(&t, "alice").await;
    let eve = sign_in(&t, "eve").await;
    let (status, page) = alice.get("/ui").await;
    assert_eq!(status, StatusCode::OK);
    for env in ["dev", "staging", "prod"] {
        assert!(page.contains(&format!("/ui/environments/{env}")), "{env}");
    }
    // A lock shows who took it, as authenticated, and what the client only says.
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
    let (_, page) = alice.get("/ui/environments/dev").await;
    assert!(page.contains("<strong>user:alice</strong>"), "{page}");
    assert!(page.contains("says dev@laptop"), "{page}");
    let (status, page) = eve.get("/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!page.contains("/ui/environments/"), "{page}");
    assert!(page.contains("may read no environment"));
    let (status, page) = eve.get("/ui/environments/prod").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(page.contains("user:eve may not"), "{page}");
    assert_eq!(
        eve.get("/ui/history/prod/network").await.0,
        StatusCode::FORBIDDEN
    );
    // The audit log: alice owns dev (team app) and may read its records, not prod's.
    assert_eq!(alice.get("/ui/audit?env=dev").await.0, StatusCode::OK);
    let (status, page) = alice.get("/ui/audit?env=prod").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let (status, _) = eve.get("/ui/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Each page is recorded as the request it stands for.
    let refused = t
        .newest_audit("prod", |r| {
            r.action == "status:read" && r.principal.as_deref() == Some("user:eve")
        })
        .await;
    assert_eq!(refused.decision.as_str(), "deny");
}

#[tokio::test]
async fn approving_from_the_dashboard_follows_the_servers_rules() {
    let p = spawn_protected("24h").await;
    let id = p.propose("pat", "prod", "network").await;
    let alice = sign_in(&p.t, "alice").await;
    let pat = sign_in(&p.t, "pat").await;
    let path = format!("/ui/changes/{id}/approve");
    // The author, with a valid form: the server's own refusal, shown on the change.
    let resp = pat.post(&path, &[("csrf", &pat.csrf)]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let page = resp.text().await.unwrap();
    assert!(page.contains("its author can never approve it"), "{page}");
    // Someone who may not approve in prod at all.
    let resp = alice.post(&path, &[("csrf", &alice.csrf)]).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("approvals come from team:platform"));
    let pat = sign_in(&p.t, "quinn").await;
    // Another owner, without the CSRF token, with another session's, and from another site.
    let before = p.client("pat").change(&id).await.unwrap();
    for (form, origin) in [
        (vec![], None),
        (vec![("csrf", alice.csrf.as_str())], None),
        (
            vec![("csrf", pat.csrf.as_str())],
            Some("http://evil.example"),
        ),
    ] {
        let mut request = pat
            .http
            .post(format!("{}{path}", pat.base))
            .header(COOKIE, &pat.cookie)
            .form(&form);
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let resp = request.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp
            .text()
            .await
            .unwrap()
            .contains("not sent from a page of this dashboard"));
    }
    assert_eq!(
        p.client("pat").change(&id).await.unwrap(),
        before,
        "nothing was stored"
    );
    // The owner, properly: approved, as the API would have.
    let resp = pat.post(&path, &[("csrf", &pat.csrf)]).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, page) = pat.get(resp.headers()[LOCATION].to_str().unwrap()).await;
    assert!(page.contains(&format!("You approved {id}")), "{page}");
    let change = p.client("pat").change(&id).await.unwrap();
    assert_eq!(change.approvals.len(), 1);
    assert_eq!(change.approvals[0].approver, "user:quinn");
    let record =
        p.t.newest_audit("prod", |r| {
            r.action == "change:approve" && r.decision.as_str() == "allow"
        })
        .await;
    assert_eq!(record.principal.as_deref(), Some("user:quinn"));
    assert_eq!(record.decision.as_str(), "allow");
    // Rejecting needs a reason; a long one is refused, and the change stays open.
    let reject = format!("/ui/changes/{id}/reject");
    let long = "x".repeat(5000);
    let resp = pat
        .post(&reject, &[("csrf", &pat.csrf), ("reason", &long)])
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        p.client("pat").change(&id).await.unwrap().status.as_str(),
        "open"
    );
}

#[tokio::test]
async fn text_from_requests_is_shown_as_text_and_pages_allow_no_script() {
    let t = spawn_app().await;
    // A state name with markup is refused, and recorded as sent.
    let resp = t
        .as_("alice")
        .post(
            "dev/app%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            state_doc(1, "L", ""),
        )
        .send()
        .await;
    assert_status(&resp, StatusCode::BAD_REQUEST);
    // Resource names with markup are stored, as terraform would let them be.
    let doc = |input: &str| {
        format!(r#"{{"version":4,"serial":{},"lineage":"L","resources":[{{"mode":"managed","type":"terraform_data","name":"<img src=x onerror=alert(2)>","instances":[{{"attributes":{{"input":"{input}"}}}}]}}]}}"#, input.len())
            .into_bytes()
    };
    for input in ["<b>one</b>", "<b>two!</b>"] {
        assert_status(
            &t.as_("alice").post("dev/app", doc(input)).send().await,
            StatusCode::OK,
        );
    }
    let alice = sign_in(&t, "alice").await;
    let (status, page) = alice.get("/ui/history/dev/app?from=1&to=2").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(!page.contains("<b>"), "{page}");
    assert!(
        page.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;two!&lt;/b&gt;"), "{page}");
    // The audit log shows the refused name as sent, as text.
    let (_, page) = alice.get("/ui/audit?env=dev").await;
    assert!(
        page.contains("app&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    let resp = alice
        .http
        .get(format!("{}/ui", alice.base))
        .header(COOKIE, &alice.cookie)
        .send()
        .await
        .unwrap();
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
}

#[tokio::test]
async fn an_environment_page_shows_each_states_health() {
    let t = spawn_app().await;
    for (serial, state) in [(1, "app"), (1, "net"), (5, "net")] {
        let body = state_doc(serial, "L", "");
        assert_status(
            &t.as_("alice")
                .post(format!("dev/{state}"), body)
                .send()
                .await,
            StatusCode::OK,
        );
    }
    let alice = sign_in(&t, "alice").await;
    let (status, page) = alice.get("/ui/environments/dev").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<th>Health</th>"), "{page}");
    // net's serial jumped: it needs a look, naming the signal; app is fine.
    let row = |name: &str| {
        let start = page.find(&format!(">{name}</a>")).expect("the state's row");
        let end = page[start..].find("</tr>").unwrap() + start;
        page[start..end].to_string()
    };
    assert!(
        row("net").contains("needs a look")
            && row("net").contains("serial jumped past writes made elsewhere"),
        "{}",
        row("net")
    );
    assert!(
        !row("app").contains("needs a look") && row("app").contains(">ok<"),
        "{}",
        row("app")
    );
}

#[tokio::test]
async fn an_environment_page_says_where_it_is_written_and_read_from() {
    let config = CONFIG.replace(
        "  write = [\"service:ci-prod\"]\n}",
        "  write = [\"service:ci-prod\"]\n  write_from = [\"10.20.0.0/16\"]\n  read_from = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n}",
    );
    let t = spawn_app_with(&config).await;
    let pat = sign_in(&t, "pat").await;
    let (status, page) = pat.get("/ui/environments/prod").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Written only from</dt><dd class=\"mono\">10.20.0.0/16</dd>")
            && page.contains("127.0.0.0/8, 10.0.0.0/8"),
        "{page}"
    );
    let (_, dev) = pat.get("/ui/environments/dev").await;
    assert!(!dev.contains("Written only from"), "{dev}");
}
