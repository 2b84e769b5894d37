//! OIDC ID tokens from CI providers: a pipeline proves who it is, and from which repository
//! and branch, with a JWT its provider signed. Verified here against the service's JWKS:
//! signature (RS256 or ES256 only), issuer, audience, expiry, and the claims the config
//! requires. The branch the policy sees comes from the verified `ref` claim and nothing else.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::AuthError;
use crate::config::{Config, Oidc};

/// What a verified token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub service: String,
    /// From `ref`: `refs/heads/main` (GitHub) or `main` with `ref_type = branch` (GitLab).
    pub branch: Option<String>,
}

struct Trusted {
    service: String,
    config: Oidc,
    keys: JwkSet,
}

/// The services that trust OIDC tokens, with their keys loaded.
#[derive(Default)]
pub struct OidcVerifier {
    trusted: Vec<Trusted>,
}

#[derive(Debug, thiserror::Error)]
#[error("service \"{service}\": cannot load the JWKS file {path}: {problem}")]
pub struct OidcError {
    service: String,
    path: String,
    problem: String,
}

impl OidcVerifier {
    pub fn load(config: &Config) -> Result<OidcVerifier, OidcError> {
        let mut trusted = Vec::new();
        for (name, service) in &config.services {
            let Some(oidc) = &service.oidc else { continue };
            let error = |problem: String| OidcError {
                service: name.clone(),
                path: oidc.jwks_file.display().to_string(),
                problem,
            };
            let text =
                std::fs::read_to_string(&oidc.jwks_file).map_err(|e| error(e.to_string()))?;
            let keys: JwkSet = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
            trusted.push(Trusted {
                service: name.clone(),
                config: oidc.clone(),
                keys,
            });
        }
        Ok(OidcVerifier { trusted })
    }

    /// Verifies `jwt`, presented by `username` (a service name) when given.
    pub fn verify(&self, username: Option<&str>, jwt: &str) -> Result<Verified, AuthError> {
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
        let mut last = refuse("no service trusts OIDC tokens for this name".into());
        for t in self
            .trusted
            .iter()
            .filter(|t| username.is_none_or(|u| u == t.service))
        {
            let jwk = match &header.kid {
                Some(kid) => t.keys.find(kid),
                None if t.keys.keys.len() == 1 => t.keys.keys.first(),
                None => None,
            };
            let Some(jwk) = jwk else {
                last = refuse(format!(
                    "no key in service {}'s JWKS matches the token's key id",
                    t.service
                ));
                continue;
            };
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| refuse(format!("unusable JWKS key: {e}")))?;
            let mut validation = Validation::new(header.alg);
            validation.set_issuer(&[&t.config.issuer]);
            validation.set_audience(&[&t.config.audience]);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.leeway = 30;
            let claims = match jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation) {
                Ok(data) => data.claims,
                Err(e) => {
                    last = refuse(match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                            "the token has expired".into()
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => format!(
                            "wrong audience: {} expects {}",
                            t.service, t.config.audience
                        ),
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                            format!("wrong issuer: {} expects {}", t.service, t.config.issuer)
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            "the signature does not verify against the service's keys".into()
                        }
                        _ => format!("the token does not verify: {e}"),
                    });
                    continue;
                }
            };
            for (name, want) in &t.config.claims {
                match claims.get(name).and_then(|v| v.as_str()) {
                    Some(got) if got == want => {}
                    Some(got) => {
                        return Err(refuse(format!(
                            "claim {name} is \"{got}\", but {} requires \"{want}\"",
                            t.service
                        )))
                    }
                    None => {
                        return Err(refuse(format!(
                            "the token has no {name} claim, which {} requires",
                            t.service
                        )))
                    }
                }
            }
            return Ok(Verified {
                service: t.service.clone(),
                branch: branch(&claims),
            });
        }
        Err(last)
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
}
