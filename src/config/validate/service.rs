//! Validation of a `service` block and its `oidc` block: which provider's tokens are trusted,
//! where its keys come from, and the claims that bind a token to one repository.

use super::attrs::{attr, line_of};
use super::Validator;
use crate::certificate::{canonical_subject, Requirement};
use crate::config::hcl::{Block, Literal};
use crate::config::{Jwks, Oidc, Service, IDENTITY_CLAIMS};

impl Validator {
    pub(super) fn service(&mut self, block: &Block, name: &str) -> Service {
        let ctx = format!("service \"{name}\"");
        self.only_attrs(block, &ctx, &[]);
        let mut service = Service {
            line: block.line,
            ..Service::default()
        };
        for inner in &block.blocks {
            match inner.kind.as_str() {
                "oidc" if service.oidc.is_none() => {
                    service.oidc = self.oidc(inner, &format!("{ctx}: oidc"));
                }
                "certificate" if service.certificate.is_none() => {
                    service.certificate = self.certificate(inner, &format!("{ctx}: certificate"));
                }
                other => self.error(
                    inner.line,
                    format!(
                        "unexpected block `{other}` in {ctx}: expected at most one oidc block and one certificate block"
                    ),
                ),
            }
        }
        service
    }

    /// A `certificate` block: exactly one of `subject`, `dns` or `uri`.
    fn certificate(&mut self, block: &Block, ctx: &str) -> Option<Requirement> {
        self.only_attrs(block, ctx, &["subject", "dns", "uri"]);
        let subject = self.string(block, "subject", ctx);
        let dns = self.string(block, "dns", ctx);
        let uri = self.string(block, "uri", ctx);
        let required = match (subject, dns, uri) {
            (Some(subject), None, None) => match canonical_subject(&subject) {
                Ok(subject) => Requirement::Subject(subject),
                Err(problem) => {
                    self.error(line_of(block, "subject"), format!("{ctx}: {problem}"));
                    return None;
                }
            },
            (None, Some(dns), None) => Requirement::dns(&dns),
            (None, None, Some(uri)) => Requirement::Uri(uri),
            _ => {
                self.error(
                    block.line,
                    format!("{ctx} needs exactly one of subject (e.g. \"CN=runner-prod,O=acme\"), dns or uri (names of the certificate's subject alternative names)"),
                );
                return None;
            }
        };
        Some(required)
    }

    fn oidc(&mut self, block: &Block, ctx: &str) -> Option<Oidc> {
        self.only_attrs(
            block,
            ctx,
            &[
                "issuer",
                "audience",
                "jwks_file",
                "jwks_url",
                "jwks_ca_file",
                "claims",
            ],
        );
        let issuer = self.string(block, "issuer", ctx);
        let audience = self.string(block, "audience", ctx);
        let jwks = self.jwks(block, ctx);
        let claims = self.claims(block, ctx);
        match (issuer, audience, jwks) {
            (Some(issuer), Some(audience), Some(jwks)) => Some(Oidc {
                issuer,
                audience,
                jwks,
                claims,
            }),
            (None, _, _) | (_, None, _) => {
                self.error(
                    block.line,
                    format!("{ctx} needs issuer, audience and one of jwks_file or jwks_url"),
                );
                None
            }
            _ => None,
        }
    }

    /// `jwks_file` or `jwks_url` (exactly one), and `jwks_ca_file` beside the URL.
    fn jwks(&mut self, block: &Block, ctx: &str) -> Option<Jwks> {
        let file = self.string(block, "jwks_file", ctx);
        let url = self.string(block, "jwks_url", ctx);
        let ca_file = self.string(block, "jwks_ca_file", ctx);
        match (file, url) {
            (Some(_), Some(_)) => {
                self.error(
                    line_of(block, "jwks_url"),
                    format!("{ctx}: set jwks_file or jwks_url, not both: the keys must come from one place"),
                );
                None
            }
            (None, None) => {
                self.error(
                    block.line,
                    format!("{ctx} needs the provider's keys: jwks_url = \"https://...\" or jwks_file = \"FILE\""),
                );
                None
            }
            (Some(file), None) => {
                if ca_file.is_some() {
                    self.error(
                        line_of(block, "jwks_ca_file"),
                        format!("{ctx}: jwks_ca_file applies to jwks_url only; a jwks_file is read from disk"),
                    );
                }
                Some(Jwks::File(self.base.join(file)))
            }
            (None, Some(url)) => {
                if let Err(problem) = check_jwks_url(&url) {
                    self.error(
                        line_of(block, "jwks_url"),
                        format!("{ctx}: jwks_url {problem}"),
                    );
                    return None;
                }
                Some(Jwks::Url {
                    url,
                    ca_file: ca_file.map(|f| self.base.join(f)),
                })
            }
        }
    }

    /// The `claims` map of an `oidc` block, which must bind the repository or subject.
    fn claims(&mut self, block: &Block, ctx: &str) -> Vec<(String, String)> {
        let mut claims = Vec::new();
        let (line, binds) = match attr(block, "claims").map(|a| (&a.value, a.line)) {
            None => (block.line, false),
            Some((Literal::Map(entries), line)) => {
                for (k, v) in entries {
                    match v {
                        Literal::String(v) if v.is_empty() => self.error(
                            line,
                            format!("{ctx}: claim `{k}` is empty: write the exact value the token must carry"),
                        ),
                        Literal::String(v) => claims.push((k.clone(), v.clone())),
                        other => self.error(
                            line,
                            format!("{ctx}: claim `{k}` must be a string, not {}", other.kind()),
                        ),
                    }
                }
                // A bound claim with a bad value is reported above, not again as unbound.
                let binds = entries
                    .iter()
                    .any(|(k, _)| IDENTITY_CLAIMS.contains(&k.as_str()));
                (line, binds)
            }
            Some((other, line)) => {
                self.error(
                    line,
                    format!("{ctx}: claims must be a map such as {{ repository = \"acme/infra\" }}, not {}", other.kind()),
                );
                return claims;
            }
        };
        if !binds {
            self.error(
                line,
                format!(
                    "{ctx}: claims must bind the repository or subject with one of {}: with issuer and audience alone, any workflow of any repository on that issuer could act as this service",
                    IDENTITY_CLAIMS.join(", ")
                ),
            );
        }
        claims
    }
}

/// A `jwks_url` must be an absolute HTTPS URL: keys fetched over plain HTTP could be replaced
/// by anyone on the network path, and with them every token.
fn check_jwks_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("\"{text}\" is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "\"{text}\" must use https: keys fetched over plain HTTP could be replaced by anyone on the network path"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::errors;
    use crate::config::{Config, Jwks};

    #[test]
    fn an_oidc_block_binds_a_repository_or_subject() {
        let block = |lines: &str| {
            format!(
                "service \"ci\" {{\n  oidc {{\n    issuer   = \"https://token.actions.githubusercontent.com\"\n    audience = \"bulkhead\"\n{lines}\n  }}\n}}\n"
            )
        };
        let unbound = errors(&block("    jwks_file = \"j.json\""));
        assert!(
            unbound.contains("b.hcl:2: service \"ci\": oidc: claims must bind the repository or subject with one of sub, repository, repository_id, project_path, project_id: with issuer and audience alone, any workflow of any repository on that issuer could act as this service"),
            "{unbound}"
        );
        let branch_only = errors(&block(
            "    jwks_file = \"j.json\"\n    claims    = { ref = \"refs/heads/main\" }",
        ));
        assert!(
            branch_only.contains("b.hcl:6: service \"ci\": oidc: claims must bind"),
            "{branch_only}"
        );
        let empty = errors(&block(
            "    jwks_file = \"j.json\"\n    claims    = { repository = \"\" }",
        ));
        assert!(empty.contains("claim `repository` is empty"), "{empty}");
        assert!(!empty.contains("must bind"), "{empty}");

        let gitlab = Config::parse(
            Path::new("etc/b.hcl"),
            &block("    jwks_url = \"https://gitlab.example/oauth/discovery/keys\"\n    jwks_ca_file = \"ca.pem\"\n    claims = { project_path = \"acme/infra\" }"),
        )
        .unwrap();
        assert_eq!(
            gitlab.services["ci"].oidc.as_ref().unwrap().jwks,
            Jwks::Url {
                url: "https://gitlab.example/oauth/discovery/keys".into(),
                ca_file: Some("etc/ca.pem".into())
            }
        );

        let claims = "\n    claims = { sub = \"repo:acme/infra:ref:refs/heads/main\" }";
        let both = errors(&block(&format!(
            "    jwks_file = \"j.json\"\n    jwks_url = \"https://x.example/keys\"{claims}"
        )));
        assert!(
            both.contains("b.hcl:6: service \"ci\": oidc: set jwks_file or jwks_url, not both"),
            "{both}"
        );
        let neither = errors(&block(claims));
        assert!(
            neither.contains("b.hcl:2: service \"ci\": oidc needs the provider's keys"),
            "{neither}"
        );
        let plain = errors(&block(&format!(
            "    jwks_url = \"http://x.example/keys\"{claims}"
        )));
        assert!(
            plain.contains("jwks_url \"http://x.example/keys\" must use https"),
            "{plain}"
        );
        let ca_with_file = errors(&block(&format!(
            "    jwks_file = \"j.json\"\n    jwks_ca_file = \"ca.pem\"{claims}"
        )));
        assert!(
            ca_with_file.contains("jwks_ca_file applies to jwks_url only"),
            "{ca_with_file}"
        );
    }
}
