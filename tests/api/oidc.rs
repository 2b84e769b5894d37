//! The pipeline's OIDC identity: token times, claims that bind a repository, trying each
//! service of an issuer, key rotation, and keys fetched from a `jwks_url` over HTTPS (from a
//! JWKS server the test runs on loopback, with a certificate authority of its own).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bulkhead::identity::oidc::jwks::REFETCH_INTERVAL;
use reqwest::StatusCode;

use crate::changes::{spawn_protected, ISSUER};
use crate::helpers::*;

/// An ES256 signing key of the test's CI provider.
struct SigningKey {
    kid: Option<&'static str>,
    pem: String,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn new(kid: Option<&'static str>) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        });
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        SigningKey {
            kid,
            pem: pair.serialize_pem(),
            jwk,
        }
    }

    /// A token from `repository`'s main branch, with `edit` applied to its claims.
    fn token(&self, repository: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({
            "iss": ISSUER, "aud": "bulkhead",
            "sub": format!("repo:{repository}:ref:refs/heads/main"),
            "repository": repository, "ref": "refs/heads/main",
            "iat": now, "exp": now + 600,
        });
        edit(&mut claims);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = self.kid.map(str::to_string);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    let keys: Vec<&serde_json::Value> = keys.iter().map(|k| &k.jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A config where `ci-app` and `ci-prod` trust the same issuer, for different repositories;
/// `keys` is the rest of each oidc block (jwks_file or jwks_url).
fn config(app_keys: &str, prod_keys: &str) -> String {
    format!(
        r#"
server {{
  data_dir = "data"
}}
team "platform" {{ members = ["pat"] }}
service "ci-app" {{
  oidc {{
    issuer   = "{ISSUER}"
    audience = "bulkhead"
    claims   = {{ repository = "acme/app" }}
    {app_keys}
  }}
}}
service "ci-prod" {{
  oidc {{
    issuer   = "{ISSUER}"
    audience = "bulkhead"
    claims   = {{ repository = "acme/infra" }}
    {prod_keys}
  }}
}}
environment "dev" {{
  owner = "team:platform"
  read  = ["team:platform", "service:ci-app"]
  write = ["service:ci-app"]
}}
environment "prod" {{
  owner = "team:platform"
  read  = ["team:platform", "service:ci-prod"]
  write = ["service:ci-prod"]
}}
"#
    )
}

/// Writes a JWKS file into `dir` and returns the oidc line naming it.
fn jwks_file(dir: &std::path::Path, name: &str, keys: &[&SigningKey]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, jwks(keys)).unwrap();
    format!("jwks_file = \"{}\"", path.display())
}

/// The sentence of a 401.
async fn refused(resp: reqwest::Response) -> String {
    assert_status(&resp, StatusCode::UNAUTHORIZED);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn tokens_not_valid_yet_or_issued_in_the_future_are_refused_and_change_nothing() {
    let p = spawn_protected("24h").await;
    let change = p.approved("network").await;
    let now = chrono::Utc::now().timestamp();
    let path = format!("prod/network?change={change}");
    let cases = [
        (
            "nbf",
            p.issuer.token("main", |c| c["nbf"] = (now + 600).into()),
            "OIDC token refused: the token is not valid yet: its nbf (not before) is ",
        ),
        (
            "iat",
            p.issuer.token("main", |c| c["iat"] = (now + 600).into()),
            "OIDC token refused: the token says it was issued ",
        ),
        (
            "iat text",
            p.issuer.token("main", |c| c["iat"] = "now".into()),
            "OIDC token refused: the token's iat claim is not a number of seconds",
        ),
    ];
    for (what, jwt, sentence) in cases {
        let body = refused(p.pipeline(&jwt).lock(&path).id("lock-1").send().await).await;
        assert!(body.starts_with(sentence), "{what}: {body}");
        let last = p.t.last_audit("prod").await;
        assert_eq!((last.status, last.principal), (Some(401), None), "{what}");
        let held =
            p.t.app
                .stores
                .environment("prod")
                .unwrap()
                .held_lock("network")
                .await
                .unwrap();
        assert!(held.is_none(), "{what}");
    }
    assert!(p.t.versions("prod", "network").await.is_empty());
    // Within the leeway, a token from a runner whose clock runs a little ahead is accepted.
    let ahead = p.issuer.token("main", |c| {
        c["nbf"] = (now + 10).into();
        c["iat"] = (now + 10).into();
    });
    assert_status(
        &p.pipeline(&ahead).lock(&path).id("lock-1").send().await,
        StatusCode::OK,
    );
}

#[tokio::test]
async fn an_oidc_block_that_binds_no_repository_or_subject_stops_serve_and_fails_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::new(Some("k1"));
    let keys = jwks_file(dir.path(), "jwks.json", &[&key]);
    let text = config(&keys, &keys).replace("    claims   = { repository = \"acme/infra\" }\n", "");
    std::fs::write(dir.path().join("bulkhead.hcl"), &text).unwrap();
    let why = "bulkhead.hcl:15: service \"ci-prod\": oidc: claims must bind the repository or subject with one of sub, repository, repository_id, project_path, project_id: with issuer and audience alone, any workflow of any repository on that issuer could act as this service";
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let serve = run(&[
        "serve",
        "--config",
        "bulkhead.hcl",
        "--listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
    assert!(!dir.path().join("data").exists(), "serve opened storage");
    let check = run(&["check", "--config", "bulkhead.hcl", "--format", "json"]);
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{stdout}");
    let findings: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    let found = findings
        .as_array()
        .or_else(|| findings["findings"].as_array())
        .unwrap()
        .iter()
        .find(|f| f["id"] == "config-invalid")
        .cloned()
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(found["line"], 15, "{stdout}");
    assert!(
        found["message"]
            .as_str()
            .unwrap()
            .contains("any workflow of any repository on that issuer could act as this service"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_token_refused_by_one_service_is_tried_by_the_next_of_its_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::new(Some("k1"));
    let other = SigningKey::new(Some("k1"));
    // ci-app comes first and refuses acme/infra's token (its claim, or its key); ci-prod takes it.
    for app_key in [&key, &other] {
        let keys = |name, k: &SigningKey| jwks_file(dir.path(), name, &[k]);
        let t = spawn_app_with(&config(
            &keys("app.json", app_key),
            &keys("prod.json", &key),
        ))
        .await;
        let infra = key.token("acme/infra", |_| {});
        let post = t
            .bearer(&infra)
            .post("prod/network", state_doc(1, "L", ""))
            .send()
            .await;
        assert_status(&post, StatusCode::OK);
        assert_eq!(
            t.last_audit("prod").await.principal.as_deref(),
            Some("service:ci-prod")
        );
        assert_eq!(t.versions("prod", "network").await.len(), 1);
        // Refused by both: the reason is the one of the service that came furthest.
        let evil = key.token("evil/infra", |_| {});
        let body = refused(
            t.bearer(&evil)
                .post("prod/network", state_doc(2, "L", ""))
                .send()
                .await,
        )
        .await;
        assert!(
            body.starts_with("OIDC token refused: claim repository is \"evil/infra\", but ci-"),
            "{body}"
        );
        assert_eq!(t.versions("prod", "network").await.len(), 1);
        // Named as ci-app, the token is ci-app's to judge alone.
        let named = t
            .client
            .get(t.url("dev/app"))
            .basic_auth("ci-app", Some(&infra))
            .send()
            .await
            .unwrap();
        let body = refused(named).await;
        let expected = if std::ptr::eq(app_key, &key) {
            "OIDC token refused: claim repository is \"acme/infra\", but ci-app requires \"acme/app\""
        } else {
            "OIDC token refused: the signature does not verify against service ci-app's keys"
        };
        assert!(body.starts_with(expected), "{body}");
    }
}

#[tokio::test]
async fn every_key_of_a_repeated_key_id_is_tried() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (SigningKey::new(Some("k1")), SigningKey::new(Some("k1")));
    let keys = jwks_file(dir.path(), "jwks.json", &[&old, &new]);
    let t = spawn_app_with(&config(&keys, &keys)).await;
    for (serial, key) in [(1, &old), (2, &new)] {
        let jwt = key.token("acme/infra", |_| {});
        let post = t
            .bearer(&jwt)
            .post("prod/network", state_doc(serial, "L", ""))
            .send()
            .await;
        assert_status(&post, StatusCode::OK);
    }
    assert_eq!(t.versions("prod", "network").await.len(), 2);
}

/// A JWKS server on loopback over HTTPS, with a certificate from a CA of the test's own.
struct JwksServer {
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    answer: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
    handle: axum_server::Handle,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl JwksServer {
    async fn start(status: StatusCode, body: String) -> JwksServer {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bulkhead test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
            leaf.pem().into_bytes(),
            leaf_key.serialize_pem().into_bytes(),
        )
        .await
        .unwrap();
        let answer = Arc::new(Mutex::new((status, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (answer.clone(), hits.clone());
        let router = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    served.lock().unwrap().clone()
                }
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        tokio::spawn(server.serve(router.into_make_service()));
        JwksServer {
            addr,
            dir,
            answer,
            hits,
            handle,
        }
    }

    fn answer(&self, status: StatusCode, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("https://{}/jwks", self.addr)
    }

    /// The oidc lines that fetch from this server, trusting its CA.
    fn oidc_lines(&self) -> String {
        format!(
            "jwks_url = \"{}\"\n    jwks_ca_file = \"{}\"",
            self.url(),
            self.dir.path().join("ca.pem").display()
        )
    }
}

/// Moves the server's refetch clock past the refetch interval.
fn a_minute_later(t: &TestApp) {
    t.app
        .oidc
        .clock()
        .advance(REFETCH_INTERVAL + Duration::from_secs(1));
}

#[tokio::test]
async fn keys_from_a_jwks_url_are_fetched_at_start_and_again_for_an_unknown_key_at_most_once_a_minute(
) {
    let (k1, k2, k3) = (
        SigningKey::new(Some("k1")),
        SigningKey::new(Some("k2")),
        SigningKey::new(Some("k3")),
    );
    let jwks_server = JwksServer::start(StatusCode::OK, jwks(&[&k1])).await;
    let dir = tempfile::tempdir().unwrap();
    let app_keys = jwks_file(dir.path(), "app.json", &[&k1]);
    let t = spawn_app_with(&config(&app_keys, &jwks_server.oidc_lines())).await;
    assert_eq!(jwks_server.hits(), 1, "fetched at start");
    let post = |jwt: String, serial| {
        let t = &t;
        async move {
            t.bearer(&jwt)
                .post("prod/network", state_doc(serial, "L", ""))
                .send()
                .await
        }
    };
    assert_status(
        &post(k1.token("acme/infra", |_| {}), 1).await,
        StatusCode::OK,
    );
    assert_eq!(jwks_server.hits(), 1, "a known key needs no fetch");

    // The provider rotates to k2. Right after the start's fetch, an unknown key id is
    // refused without asking again, however many tokens name it.
    jwks_server.answer(StatusCode::OK, jwks(&[&k1, &k2]));
    for _ in 0..3 {
        let body = refused(post(k2.token("acme/infra", |_| {}), 2).await).await;
        assert!(
            body.starts_with("OIDC token refused: no key in service ci-prod's JWKS has the token's key id \"k2\""),
            "{body}"
        );
    }
    assert_eq!(jwks_server.hits(), 1);
    assert_eq!(t.versions("prod", "network").await.len(), 1);

    // A minute on, the unknown key id fetches the set once, and k2 is picked up.
    a_minute_later(&t);
    assert_status(
        &post(k2.token("acme/infra", |_| {}), 2).await,
        StatusCode::OK,
    );
    assert_eq!(jwks_server.hits(), 2);
    assert_status(
        &post(k1.token("acme/infra", |_| {}), 3).await,
        StatusCode::OK,
    );
    assert_eq!(jwks_server.hits(), 2);

    // A key id nobody published fetches at most once a minute, concurrent tokens included.
    a_minute_later(&t);
    let unknown = k3.token("acme/infra", |_| {});
    let attempts = (0..8).map(|_| post(unknown.clone(), 4));
    for resp in futures_util::future::join_all(attempts).await {
        assert_status(&resp, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks_server.hits(), 3);
    assert_eq!(t.versions("prod", "network").await.len(), 3);
    // ci-app's file keys are not the provider's set: its tokens still verify, with no fetch.
    let app = k1.token("acme/app", |_| {});
    assert_status(
        &t.bearer(&app)
            .post("dev/app", state_doc(1, "L", ""))
            .send()
            .await,
        StatusCode::OK,
    );
    assert_eq!(jwks_server.hits(), 3);
}

#[tokio::test]
async fn a_failed_first_fetch_refuses_the_services_tokens_with_a_sentence_until_a_later_fetch_works(
) {
    let key = SigningKey::new(Some("k1"));
    let jwks_server = JwksServer::start(StatusCode::SERVICE_UNAVAILABLE, "down".into()).await;
    let dir = tempfile::tempdir().unwrap();
    let app_keys = jwks_file(dir.path(), "app.json", &[&key]);
    let t = spawn_app_with(&config(&app_keys, &jwks_server.oidc_lines())).await;
    let jwt = key.token("acme/infra", |_| {});
    let post = || {
        t.bearer(&jwt)
            .post("prod/network", state_doc(1, "L", ""))
            .send()
    };
    let unavailable = |why: &str| {
        format!(
            "OIDC token refused: the keys of service ci-prod could not be fetched from {} ({why}); the server tries again at most once a minute",
            jwks_server.url()
        )
    };
    // The server started; the service's tokens are refused, and the fetch is not retried
    // within the minute.
    assert_eq!(jwks_server.hits(), 1);
    jwks_server.answer(StatusCode::OK, jwks(&[&key]));
    let body = refused(post().await).await;
    assert_eq!(
        body.trim_end(),
        unavailable("the server answered 503 Service Unavailable")
    );
    assert_eq!(jwks_server.hits(), 1);

    // A set over 1 MiB is not read.
    a_minute_later(&t);
    let padding = "x".repeat(1024 * 1024);
    jwks_server.answer(
        StatusCode::OK,
        format!("{{\"keys\": [{}], \"padding\": \"{padding}\"}}", key.jwk),
    );
    let body = refused(post().await).await;
    assert_eq!(
        body.trim_end(),
        unavailable("the document is larger than 1024 KiB")
    );
    assert_eq!(jwks_server.hits(), 2);

    // Something that is not a key set.
    a_minute_later(&t);
    jwks_server.answer(
        StatusCode::OK,
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}".into(),
    );
    let body = refused(post().await).await;
    assert_eq!(
        body.trim_end(),
        unavailable("it holds no RS256 (RSA) or ES256 (EC P-256) signing key")
    );
    assert!(t.versions("prod", "network").await.is_empty());

    a_minute_later(&t);
    jwks_server.answer(StatusCode::OK, jwks(&[&key]));
    assert_status(&post().await, StatusCode::OK);
    assert_eq!(jwks_server.hits(), 4);
    assert_eq!(t.versions("prod", "network").await.len(), 1);
}

#[tokio::test]
async fn a_jwks_url_whose_certificate_is_not_trusted_is_never_read() {
    let key = SigningKey::new(Some("k1"));
    let jwks_server = JwksServer::start(StatusCode::OK, jwks(&[&key])).await;
    let dir = tempfile::tempdir().unwrap();
    let app_keys = jwks_file(dir.path(), "app.json", &[&key]);
    // The public authorities, not the test's own CA: the certificate does not verify.
    let lines = format!("jwks_url = \"{}\"", jwks_server.url());
    let t = spawn_app_with(&config(&app_keys, &lines)).await;
    let jwt = key.token("acme/infra", |_| {});
    let body = refused(
        t.bearer(&jwt)
            .post("prod/network", state_doc(1, "L", ""))
            .send()
            .await,
    )
    .await;
    assert!(
        body.starts_with(&format!(
            "OIDC token refused: the keys of service ci-prod could not be fetched from {} (",
            jwks_server.url()
        )),
        "{body}"
    );
    assert!(body.contains("certificate"), "{body}");
    assert_eq!(jwks_server.hits(), 0, "no request got past TLS");
    assert!(t.versions("prod", "network").await.is_empty());
}

#[tokio::test]
async fn a_jwks_ca_file_without_certificates_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::new(Some("k1"));
    let app_keys = jwks_file(dir.path(), "app.json", &[&key]);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let lines = format!(
        "jwks_url = \"https://127.0.0.1:9/jwks\"\n    jwks_ca_file = \"{}\"",
        ca.display()
    );
    let path = dir.path().join("bulkhead.hcl");
    std::fs::write(&path, with_test_storage(&config(&app_keys, &lines))).unwrap();
    let config = bulkhead::config::Config::load(&path).unwrap();
    let Err(e) = bulkhead::http::App::open(config).await else {
        panic!("the server opened with an unusable jwks_ca_file");
    };
    assert_eq!(
        e.to_string(),
        format!(
            "service \"ci-prod\": cannot use jwks_ca_file {}: it holds no PEM certificate",
            ca.display()
        )
    );
}
