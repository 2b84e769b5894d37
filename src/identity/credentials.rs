//! Reading the `Authorization` header: HTTP Basic (what terraform's `username`/`password` and
//! `TF_HTTP_USERNAME`/`TF_HTTP_PASSWORD` send) or `Bearer`.

use base64::Engine;

use super::AuthError;

/// What the caller presented; the secret is never logged.
pub struct Credentials {
    /// The Basic username, if any; empty usernames count as none.
    pub username: Option<String>,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub fn parse(header: &str) -> Result<Credentials, AuthError> {
    let (scheme, rest) = header
        .trim()
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected `Basic ...` or `Bearer ...`"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(Credentials {
            username: None,
            secret: rest.to_string(),
        });
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Malformed(
            "unsupported scheme: use Basic or Bearer",
        ));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .map_err(|_| AuthError::Malformed("Basic credentials are not valid base64"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
    let (user, password) = decoded.split_once(':').ok_or(AuthError::Malformed(
        "Basic credentials lack the `:` between name and token",
    ))?;
    Ok(Credentials {
        username: (!user.is_empty()).then(|| user.to_string()),
        secret: password.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_and_bearer() {
        let b = parse("Basic YWxpY2U6czNjcmV0").unwrap();
        assert_eq!(
            (b.username.as_deref(), b.secret.as_str()),
            (Some("alice"), "s3cret")
        );
        let t = parse("Bearer abc").unwrap();
        assert_eq!((t.username, t.secret.as_str()), (None, "abc"));
        assert!(parse("Digest x").is_err());
        assert!(parse("Basic !!!").is_err());
        assert!(!format!("{b:?}").contains("s3cret"));
    }
}
