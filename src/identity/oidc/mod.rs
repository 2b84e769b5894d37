//! OIDC ID tokens from CI providers: a pipeline proves who it is, and from which repository
//! and branch, with a JWT its provider signed. Verified here against the service's JWKS:
//! signature (RS256 or ES256 only), issuer, audience, `exp`, `nbf` and `iat`, and the claims
//! the config requires. The branch the policy sees comes from the verified `ref` claim and
//! nothing else; the subject from the verified `sub`.

pub mod jwks;

use std::sync::Arc;

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use self::jwks::{Clock, KeySet, Remote};
use super::AuthError;
use crate::config::{Config, Jwks, Oidc};

/// Seconds a token's `exp`, `nbf` and `iat` may be off from the server's clock.
pub const LEEWAY: u64 = 30;

/// What a verified token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub service: String,
    /// From `ref`: `refs/heads/main` (GitHub) or `main` with `ref_type = branch` (GitLab).
    pub branch: Option<String>,
    /// The verified `sub` claim, e.g. `repo:acme/infra:ref:refs/heads/main`.
    pub subject: Option<String>,
    /// The commit the pipeline runs, from the verified `sha` claim (GitHub and GitLab both
    /// send one), when it is a full hexadecimal commit id.
    pub commit: Option<String>,
}

enum Keys {
    File(Arc<KeySet>),
    Url(Remote),
}

struct Trusted {
    service: String,
    config: Oidc,
    keys: Keys,
}

/// The services that trust OIDC tokens, with their keys loaded.
#[derive(Default)]
pub struct OidcVerifier {
    trusted: Vec<Trusted>,
    clock: Clock,
}

/// A key set that stops the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("service \"{service}\": cannot load the JWKS file {path}: {problem}")]
    File {
        service: String,
        path: String,
        problem: String,
    },
    #[error("service \"{service}\": cannot use jwks_ca_file {path}: {problem}")]
    CaFile {
        service: String,
        path: String,
        problem: String,
    },
    #[error("service \"{service}\": cannot set up fetching {url}: {problem}")]
    Client {
        service: String,
        url: String,
        problem: String,
    },
}

/// How far one service got with a token; the furthest is the reason the caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Keys,
    Signature,
    Token,
    Claims,
}

struct Failure {
    stage: Stage,
    why: String,
}

/// How relevant a service's refusal is: first whether the token (read unverified) carries
/// the claims the service requires, so was likely meant for it; then how far it got.
type Relevance = (bool, Stage);

impl Failure {
    fn at(stage: Stage, why: String) -> Failure {
        Failure { stage, why }
    }
}

impl OidcVerifier {
    /// Reads every `jwks_file` and fetches every `jwks_url`. An unreadable file stops the
    /// start; a failed fetch does not: that service refuses tokens until a later fetch works.
    pub async fn load(config: &Config) -> Result<OidcVerifier, OidcError> {
        let mut trusted = Vec::new();
        for (name, service) in &config.services {
            let Some(oidc) = &service.oidc else { continue };
            let keys = match &oidc.jwks {
                Jwks::File(path) => {
                    let error = |problem: String| OidcError::File {
                        service: name.clone(),
                        path: path.display().to_string(),
                        problem,
                    };
                    let text = std::fs::read(path).map_err(|e| error(e.to_string()))?;
                    Keys::File(Arc::new(KeySet::parse(&text).map_err(error)?))
                }
                Jwks::Url { url, ca_file } => {
                    let pem = match ca_file {
                        None => None,
                        Some(path) => Some(std::fs::read(path).map_err(|e| OidcError::CaFile {
                            service: name.clone(),
                            path: path.display().to_string(),
                            problem: e.to_string(),
                        })?),
                    };
                    let remote =
                        Remote::new(name, url, pem.as_deref()).map_err(
                            |problem| match ca_file {
                                Some(path) => OidcError::CaFile {
                                    service: name.clone(),
                                    path: path.display().to_string(),
                                    problem,
                                },
                                None => OidcError::Client {
                                    service: name.clone(),
                                    url: url.clone(),
                                    problem,
                                },
                            },
                        )?;
                    Keys::Url(remote)
                }
            };
            trusted.push(Trusted {
                service: name.clone(),
                config: oidc.clone(),
                keys,
            });
        }
        let verifier = OidcVerifier {
            trusted,
            clock: Clock::default(),
        };
        let fetches = verifier.trusted.iter().filter_map(|t| match &t.keys {
            Keys::Url(remote) => Some(remote.refetch(&verifier.clock)),
            Keys::File(_) => None,
        });
        futures_util::future::join_all(fetches).await;
        Ok(verifier)
    }

    /// The clock of the refetch limits.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Verifies `jwt`, presented by `username` (a service name) when given. Every service
    /// that trusts the token's issuer is tried in turn (in name order); the first that
    /// accepts it is the caller. When none does, the refusal names the reason of the service
    /// whose required claims the token carries, or else of the one that came closest to
    /// accepting it.
    pub async fn verify(&self, username: Option<&str>, jwt: &str) -> Result<Verified, AuthError> {
        let refuse = |why: String| AuthError::Jwt(why);
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| {
            refuse(format!(
                "not a valid JWT ({e}); unsigned tokens (alg none) are never accepted"
            ))
        })?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(refuse(format!(
                "algorithm {:?} is not accepted: use RS256 or ES256",
                header.alg
            )));
        }
        let username = username.map(|u| u.strip_prefix("service:").unwrap_or(u));
        let named: Vec<&Trusted> = self
            .trusted
            .iter()
            .filter(|t| username.is_none_or(|u| u == t.service))
            .collect();
        if named.is_empty() {
            return Err(refuse(match username {
                Some(u) => format!("service {} does not trust OIDC tokens", shown(u)),
                None => "no service trusts OIDC tokens".into(),
            }));
        }
        // The issuer is read unverified only to choose whose keys to try; each service's
        // verification checks it again.
        let unverified = unverified_claims(jwt);
        let issuer = unverified
            .get("iss")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                refuse("the token names no issuer (iss): it cannot be from a CI provider".into())
            })?;
        let mut best: Option<(Relevance, Failure)> = None;
        for t in named.iter().filter(|t| t.config.issuer == issuer) {
            match self.verify_for(t, &header, jwt).await {
                Ok(verified) => return Ok(verified),
                Err(failure) => {
                    let meant =
                        t.config.claims.iter().all(|(name, want)| {
                            claim_text(&unverified, name).as_ref() == Some(want)
                        });
                    let relevance = (meant, failure.stage);
                    if best.as_ref().is_none_or(|(b, _)| relevance > *b) {
                        best = Some((relevance, failure));
                    }
                }
            }
        }
        Err(refuse(match best {
            Some((_, failure)) => failure.why,
            None => {
                let services: Vec<&str> = named.iter().map(|t| t.service.as_str()).collect();
                format!(
                    "issuer {} is not trusted by service {}",
                    shown(issuer),
                    services.join(", ")
                )
            }
        }))
    }

    /// One service's verdict on a token of its issuer.
    async fn verify_for(
        &self,
        t: &Trusted,
        header: &jsonwebtoken::Header,
        jwt: &str,
    ) -> Result<Verified, Failure> {
        let (alg, kid) = (header.alg, header.kid.as_deref());
        let keys = match &t.keys {
            Keys::File(keys) => keys.clone(),
            Keys::Url(remote) => remote
                .keys(&self.clock, |keys| keys.matching(alg, kid).next().is_some())
                .await
                .map_err(|e| Failure::at(Stage::Keys, e.0))?,
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&t.config.issuer]);
        validation.set_audience(&[&t.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = LEEWAY;
        let mut tried = 0;
        for key in keys.matching(alg, kid) {
            tried += 1;
            match jsonwebtoken::decode::<serde_json::Value>(jwt, key, &validation) {
                Ok(data) => return accept(t, &data.claims),
                // Another key of the same id or algorithm may still verify it.
                Err(e) if signature_failed(e.kind()) => continue,
                Err(e) => return Err(Failure::at(Stage::Token, token_problem(t, &e))),
            }
        }
        if tried == 0 {
            return Err(Failure::at(
                Stage::Keys,
                match kid {
                    Some(kid) => format!(
                        "no key in service {}'s JWKS has the token's key id {}",
                        t.service,
                        shown(kid)
                    ),
                    None => format!(
                        "the token names no key id and service {}'s JWKS has no {alg:?} key",
                        t.service
                    ),
                },
            ));
        }
        Err(Failure::at(
            Stage::Signature,
            format!(
                "the signature does not verify against service {}'s keys",
                t.service
            ),
        ))
    }
}

/// Whether decoding stopped before the claims were read, at a signature this key cannot
/// verify.
fn signature_failed(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::Crypto(_)
    )
}

fn token_problem(t: &Trusted, e: &jsonwebtoken::errors::Error) -> String {
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::InvalidAudience => format!(
            "wrong audience: {} expects {}",
            t.service, t.config.audience
        ),
        ErrorKind::InvalidIssuer => {
            format!("wrong issuer: {} expects {}", t.service, t.config.issuer)
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the token has no {claim} claim, which every OIDC token must carry")
        }
        _ => format!("the token does not verify: {e}"),
    }
}

/// The checks after the signature: the token's times and the claims the service requires.
fn accept(t: &Trusted, claims: &serde_json::Value) -> Result<Verified, Failure> {
    let now = jsonwebtoken::get_current_timestamp();
    times(claims, now).map_err(|why| Failure::at(Stage::Token, why))?;
    for (name, want) in &t.config.claims {
        match claim_text(claims, name) {
            Some(got) if got == *want => {}
            Some(got) => {
                return Err(Failure::at(
                    Stage::Claims,
                    format!(
                        "claim {name} is {}, but {} requires \"{want}\"",
                        shown(&got),
                        t.service
                    ),
                ))
            }
            None => {
                return Err(Failure::at(
                    Stage::Claims,
                    format!(
                        "the token has no {name} claim, which {} requires",
                        t.service
                    ),
                ))
            }
        }
    }
    Ok(Verified {
        service: t.service.clone(),
        branch: branch(claims),
        subject: claims
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        commit: commit(claims),
    })
}

/// The `sha` claim, lower-cased, when it is a whole commit id (SHA-1 or SHA-256 in hex).
fn commit(claims: &serde_json::Value) -> Option<String> {
    let sha = claims.get("sha")?.as_str()?;
    let whole = matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    whole.then(|| sha.to_ascii_lowercase())
}

/// A claim as the config's text compares it: a string, or a number's decimal digits.
fn claim_text(claims: &serde_json::Value, name: &str) -> Option<String> {
    match claims.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `nbf` and `iat`, when present, must be numbers no later than `now` (plus [`LEEWAY`]).
fn times(claims: &serde_json::Value, now: u64) -> Result<(), String> {
    let seconds = |name: &str| match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("the token's {name} claim is not a number of seconds")),
    };
    let ahead = |at: f64| at - now as f64;
    if let Some(nbf) = seconds("nbf")? {
        if ahead(nbf) > LEEWAY as f64 {
            return Err(format!(
                "the token is not valid yet: its nbf (not before) is {:.0} s from now; use it after that time",
                ahead(nbf)
            ));
        }
    }
    if let Some(iat) = seconds("iat")? {
        if ahead(iat) > LEEWAY as f64 {
            return Err(format!(
                "the token says it was issued {:.0} s in the future (iat): a provider never does that, so it is refused; check the clocks of the CI provider and this server",
                ahead(iat)
            ));
        }
    }
    Ok(())
}

/// A token's payload, unverified (`null` when it is not JSON).
fn unverified_claims(jwt: &str) -> serde_json::Value {
    let Some(payload) = jwt.split('.').nth(1) else {
        return serde_json::Value::Null;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Text from a token, quoted with control characters escaped and cut to a readable length.
fn shown(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

fn branch(claims: &serde_json::Value) -> Option<String> {
    let reference = claims.get("ref")?.as_str()?;
    if let Some(branch) = reference.strip_prefix("refs/heads/") {
        return Some(branch.to_string());
    }
    if reference.starts_with("refs/") {
        return None; // a tag or a pull request is not a branch
    }
    match claims.get("ref_type").and_then(|v| v.as_str()) {
        Some("branch") => Some(reference.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_comes_from_a_whole_sha_claim() {
        let c = |v: serde_json::Value| commit(&v);
        let sha = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            c(serde_json::json!({ "sha": sha })).as_deref(),
            Some(sha.to_ascii_lowercase().as_str())
        );
        assert_eq!(c(serde_json::json!({"sha": "0123456"})), None);
        assert_eq!(c(serde_json::json!({"sha": "z".repeat(40)})), None);
        assert_eq!(c(serde_json::json!({"sha": 7})), None);
        assert_eq!(c(serde_json::json!({})), None);
    }

    #[test]
    fn branches_come_from_ref() {
        let b = |v: serde_json::Value| branch(&v);
        assert_eq!(
            b(serde_json::json!({"ref": "refs/heads/main"})),
            Some("main".into())
        );
        assert_eq!(b(serde_json::json!({"ref": "refs/tags/v1"})), None);
        assert_eq!(
            b(serde_json::json!({"ref": "main", "ref_type": "branch"})),
            Some("main".into())
        );
        assert_eq!(b(serde_json::json!({"ref": "v1", "ref_type": "tag"})), None);
        assert_eq!(b(serde_json::json!({})), None);
    }

    /// An ES256 key: its private PEM and its public JWK with `kid`.
    fn key(kid: Option<&str>) -> (String, serde_json::Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig",
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        });
        if let Some(kid) = kid {
            jwk["kid"] = kid.into();
        }
        (pair.serialize_pem(), jwk)
    }

    fn sign(pem: &str, kid: Option<&str>, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = serde_json::json!({
            "iss": "https://ci.example", "aud": "bulkhead", "sub": "repo:acme/infra:ref:refs/heads/main",
            "repository": "acme/infra", "ref": "refs/heads/main", "iat": now, "exp": now + 600,
        });
        edit(&mut claims);
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_string);
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn trusted(service: &str, repository: &str, keys: &[&serde_json::Value]) -> Trusted {
        let doc = serde_json::json!({ "keys": keys });
        Trusted {
            service: service.into(),
            config: Oidc {
                issuer: "https://ci.example".into(),
                audience: "bulkhead".into(),
                jwks: Jwks::File("unused".into()),
                claims: vec![("repository".into(), repository.into())],
            },
            keys: Keys::File(Arc::new(KeySet::parse(doc.to_string().as_bytes()).unwrap())),
        }
    }

    fn verifier(trusted: Vec<Trusted>) -> OidcVerifier {
        OidcVerifier {
            trusted,
            clock: Clock::default(),
        }
    }

    fn refusal(r: Result<Verified, AuthError>) -> String {
        match r {
            Err(AuthError::Jwt(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn not_before_and_issued_at_in_the_future_are_refused() {
        let (pem, jwk) = key(Some("k1"));
        let v = verifier(vec![trusted("ci", "acme/infra", &[&jwk])]);
        let now = jsonwebtoken::get_current_timestamp();
        let ok = v
            .verify(None, &sign(&pem, Some("k1"), |_| {}))
            .await
            .unwrap();
        assert_eq!(ok.service, "ci");
        assert_eq!(
            ok.subject.as_deref(),
            Some("repo:acme/infra:ref:refs/heads/main")
        );
        // Within the leeway, a runner's clock slightly ahead is no reason to refuse.
        let slightly = sign(&pem, Some("k1"), |c| {
            c["nbf"] = (now + 20).into();
            c["iat"] = (now + 20).into();
        });
        assert!(v.verify(None, &slightly).await.is_ok());
        // How far ahead is counted from the verifier's own now, which may be a second on.
        let seconds_after = |why: &str, prefix: &str| -> u64 {
            let rest = why.strip_prefix(prefix).unwrap_or_else(|| panic!("{why}"));
            rest.split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{why}"))
        };
        let nbf = sign(&pem, Some("k1"), |c| c["nbf"] = (now + 300).into());
        let why = refusal(v.verify(None, &nbf).await);
        let ahead = seconds_after(&why, "the token is not valid yet: its nbf (not before) is ");
        assert!((298..=300).contains(&ahead), "{why}");
        let iat = sign(&pem, Some("k1"), |c| c["iat"] = (now + 300).into());
        let why = refusal(v.verify(None, &iat).await);
        let ahead = seconds_after(&why, "the token says it was issued ");
        assert!((298..=300).contains(&ahead), "{why}");
        let text = sign(&pem, Some("k1"), |c| c["iat"] = "yesterday".into());
        let why = refusal(v.verify(None, &text).await);
        assert_eq!(why, "the token's iat claim is not a number of seconds");
    }

    #[test]
    fn how_far_ahead_a_token_is_is_said_in_seconds() {
        let now = 1_800_000_000;
        let ahead = serde_json::json!({ "nbf": now + 300, "iat": now });
        assert_eq!(
            times(&ahead, now).unwrap_err(),
            "the token is not valid yet: its nbf (not before) is 300 s from now; use it after that time"
        );
        let issued = serde_json::json!({ "iat": now + 300 });
        assert!(times(&issued, now)
            .unwrap_err()
            .starts_with("the token says it was issued 300 s in the future (iat)"));
        let within = serde_json::json!({ "nbf": now + LEEWAY, "iat": now + LEEWAY });
        assert_eq!(times(&within, now), Ok(()));
    }

    #[tokio::test]
    async fn every_key_of_a_repeated_id_or_of_no_id_is_tried() {
        let (old_pem, old) = key(Some("k1"));
        let (new_pem, new) = key(Some("k1"));
        let (bare_pem, bare) = key(None);
        let v = verifier(vec![trusted("ci", "acme/infra", &[&old, &new, &bare])]);
        for (pem, kid) in [
            (&old_pem, Some("k1")),
            (&new_pem, Some("k1")),
            (&old_pem, None),
            (&new_pem, None),
            (&bare_pem, None),
        ] {
            assert!(
                v.verify(None, &sign(pem, kid, |_| {})).await.is_ok(),
                "{kid:?}"
            );
        }
        // A key id restricts the keys tried: the key without an id is not among them.
        let why = refusal(v.verify(None, &sign(&bare_pem, Some("k1"), |_| {})).await);
        assert_eq!(
            why,
            "the signature does not verify against service ci's keys"
        );
        let why = refusal(v.verify(None, &sign(&old_pem, Some("k9"), |_| {})).await);
        assert_eq!(
            why,
            "no key in service ci's JWKS has the token's key id \"k9\""
        );
    }

    #[tokio::test]
    async fn a_refusal_by_one_service_tries_the_next() {
        let (pem, jwk) = key(Some("k1"));
        let (other_pem, other) = key(Some("k1"));
        let v = verifier(vec![
            trusted("ci-a", "acme/infra", &[&jwk]),
            trusted("ci-b", "acme/app", &[&jwk]),
            trusted("ci-c", "acme/web", &[&other]),
        ]);
        let app = sign(&pem, Some("k1"), |c| c["repository"] = "acme/app".into());
        assert_eq!(v.verify(None, &app).await.unwrap().service, "ci-b");
        let web = sign(&other_pem, Some("k1"), |c| {
            c["repository"] = "acme/web".into()
        });
        assert_eq!(v.verify(None, &web).await.unwrap().service, "ci-c");
        // The username picks one service, and only that one.
        let why = refusal(v.verify(Some("ci-a"), &app).await);
        assert_eq!(
            why,
            "claim repository is \"acme/app\", but ci-a requires \"acme/infra\""
        );
        // The service that came furthest names the reason: here a claim, not a signature.
        let evil = sign(&pem, Some("k1"), |c| c["repository"] = "evil/infra".into());
        let why = refusal(v.verify(None, &evil).await);
        assert_eq!(
            why,
            "claim repository is \"evil/infra\", but ci-a requires \"acme/infra\""
        );
        // A refusal by the service the token's claims point to beats one by a service it
        // was not meant for, however far that one got.
        let forged = sign(&pem, Some("k1"), |c| c["repository"] = "acme/web".into());
        let why = refusal(v.verify(None, &forged).await);
        assert_eq!(
            why,
            "the signature does not verify against service ci-c's keys"
        );
        let elsewhere = sign(&pem, Some("k1"), |c| {
            c["iss"] = "https://evil.example".into()
        });
        let why = refusal(v.verify(Some("service:ci-b"), &elsewhere).await);
        assert_eq!(
            why,
            "issuer \"https://evil.example\" is not trusted by service ci-b"
        );
    }
}
