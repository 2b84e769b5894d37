//! Validation of an `environment` block: its owner and access lists, storage and limits, and
//! its protection blocks (approval, pipeline, break-glass).

use std::collections::BTreeMap;
use std::time::Duration;

use super::attrs::attr;
use super::{Named, Validator};
use crate::config::hcl::{Attr, Block, Literal};
use crate::config::units::parse_size;
use crate::config::{
    Approval, Breakglass, Environment, Pipeline, Subject, APPLY_WINDOW, DEFAULT_MAX_PLAN_SIZE,
    DEFAULT_MAX_STATE_SIZE,
};

impl Validator {
    pub(super) fn environment(&mut self, block: &Block, name: String) -> (Environment, Vec<Named>) {
        let ctx = format!("environment \"{name}\"");
        self.only_attrs(
            block,
            &ctx,
            &[
                "owner",
                "paths",
                "read",
                "write",
                "force_unlock",
                "force_write",
                "delete",
                "storage",
                "max_state_size",
                "max_plan_size",
                "lock_lease",
            ],
        );
        let mut named = Vec::new();
        let owner = match attr(block, "owner") {
            None => {
                self.error(
                    block.line,
                    format!("{ctx} has no owner: add owner = \"team:NAME\" (the team or person accountable for it)"),
                );
                None
            }
            Some(a) => match &a.value {
                Literal::String(s) => match Subject::parse(s) {
                    Ok(subject) => {
                        named.push(Named {
                            subject: subject.clone(),
                            line: a.line,
                            attr: "owner",
                        });
                        Some(subject)
                    }
                    Err(problem) => {
                        self.error(a.line, format!("{ctx}: owner {problem}"));
                        None
                    }
                },
                other => {
                    self.error(
                        a.line,
                        format!("{ctx}: owner must be a string, not {}", other.kind()),
                    );
                    None
                }
            },
        };
        let owner = owner.unwrap_or_else(|| Subject::Team(String::new()));
        let read = self
            .subjects(block, "read", &ctx, &mut named)
            .unwrap_or_default();
        let write = self
            .subjects(block, "write", &ctx, &mut named)
            .unwrap_or_default();
        let force_unlock = self
            .subjects(block, "force_unlock", &ctx, &mut named)
            .unwrap_or_else(|| vec![owner.clone()]);
        let force_write = self
            .subjects(block, "force_write", &ctx, &mut named)
            .unwrap_or_default();
        let delete = self
            .subjects(block, "delete", &ctx, &mut named)
            .unwrap_or_else(|| vec![owner.clone()]);
        let paths = self
            .string_list(block, "paths", &ctx)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let storage = self.string(block, "storage", &ctx);
        if let (Some(url), Some(a)) = (&storage, attr(block, "storage")) {
            if let Err(problem) = crate::store::check_url(url) {
                self.error(a.line, format!("{ctx}: storage: {problem}"));
            }
        }
        let max_state_size = match attr(block, "max_state_size") {
            None => DEFAULT_MAX_STATE_SIZE,
            Some(a) => match parse_size(&a.value) {
                Ok(n) => n,
                Err(problem) => {
                    self.error(a.line, format!("{ctx}: max_state_size {problem}"));
                    DEFAULT_MAX_STATE_SIZE
                }
            },
        };
        let max_plan_size = match attr(block, "max_plan_size") {
            None => DEFAULT_MAX_PLAN_SIZE,
            Some(a) => match parse_size(&a.value) {
                Ok(n) => n,
                Err(problem) => {
                    self.error(a.line, format!("{ctx}: max_plan_size {problem}"));
                    DEFAULT_MAX_PLAN_SIZE
                }
            },
        };
        let lock_lease = self.duration(block, "lock_lease", &ctx);
        let (approval, pipeline, breakglass) = self.protection(block, &ctx, &owner, &mut named);
        let env = Environment {
            name,
            line: block.line,
            owner,
            paths,
            read,
            write,
            force_unlock,
            force_write,
            delete,
            storage,
            max_state_size,
            max_plan_size,
            lock_lease,
            approval,
            pipeline,
            breakglass,
        };
        (env, named)
    }

    /// The approval, pipeline and breakglass blocks of an environment.
    fn protection(
        &mut self,
        block: &Block,
        ctx: &str,
        owner: &Subject,
        named: &mut Vec<Named>,
    ) -> (Option<Approval>, Option<Pipeline>, Option<Breakglass>) {
        let (mut approval, mut pipeline, mut breakglass) = (None, None, None);
        let mut seen = BTreeMap::new();
        for inner in &block.blocks {
            if let Some(first) = seen.insert(inner.kind.as_str(), inner.line) {
                self.error(
                    inner.line,
                    format!(
                        "duplicate {} block in {ctx} (first on line {first})",
                        inner.kind
                    ),
                );
                continue;
            }
            let inner_ctx = format!("{ctx}: {}", inner.kind);
            match inner.kind.as_str() {
                "approval" => {
                    self.only_attrs(
                        inner,
                        &inner_ctx,
                        &["required", "approvers", "expires", "apply_window"],
                    );
                    let required = match attr(inner, "required") {
                        None => 1,
                        Some(Attr {
                            value: Literal::Number(n),
                            ..
                        }) if (1.0..=100.0).contains(n) && n.fract() == 0.0 => *n as u32,
                        Some(a) => {
                            self.error(
                                a.line,
                                format!("{inner_ctx}: required must be a whole number from 1 to 100"),
                            );
                            1
                        }
                    };
                    let approvers = self
                        .subjects(inner, "approvers", &inner_ctx, named)
                        .unwrap_or_else(|| vec![owner.clone()]);
                    let expires = self
                        .duration(inner, "expires", &inner_ctx)
                        .unwrap_or(Duration::from_secs(24 * 3600));
                    let apply_window = self
                        .duration(inner, "apply_window", &inner_ctx)
                        .unwrap_or(APPLY_WINDOW);
                    approval = Some(Approval {
                        required,
                        approvers,
                        expires,
                        apply_window,
                    });
                }
                "pipeline" => {
                    self.only_attrs(inner, &inner_ctx, &["branches"]);
                    let branches = self
                        .string_list(inner, "branches", &inner_ctx)
                        .into_iter()
                        .map(|(b, _)| b)
                        .collect();
                    pipeline = Some(Pipeline { branches });
                }
                "breakglass" => {
                    self.only_attrs(inner, &inner_ctx, &["allowed", "max_ttl"]);
                    let allowed = self
                        .subjects(inner, "allowed", &inner_ctx, named)
                        .unwrap_or_default();
                    if allowed.is_empty() {
                        self.error(
                            inner.line,
                            format!("{inner_ctx}: `allowed` must name who may break the glass"),
                        );
                    }
                    let max_ttl = self
                        .duration(inner, "max_ttl", &inner_ctx)
                        .unwrap_or(Duration::from_secs(2 * 3600));
                    breakglass = Some(Breakglass { allowed, max_ttl });
                }
                other => self.error(
                    inner.line,
                    format!("unknown block `{other}` in {ctx}: expected approval, pipeline or breakglass"),
                ),
            }
        }
        (approval, pipeline, breakglass)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::tests::{errors, GOOD};
    use crate::config::{Config, Jwks, Subject};

    #[test]
    fn a_lock_lease_is_a_duration_and_off_by_default() {
        let c = Config::parse(Path::new("b.hcl"), GOOD).unwrap();
        assert_eq!(c.environment("prod").unwrap().lock_lease, None);
        let leased = GOOD.replace(
            "max_state_size = \"1MiB\"",
            "max_state_size = \"1MiB\"\n  lock_lease = \"5m\"",
        );
        let c = Config::parse(Path::new("b.hcl"), &leased).unwrap();
        assert_eq!(
            c.environment("prod").unwrap().lock_lease,
            Some(Duration::from_secs(300))
        );
        let e = errors(&GOOD.replace("max_state_size = \"1MiB\"", "lock_lease = \"soon\""));
        assert!(
            e.contains("environment \"prod\": lock_lease \"soon\""),
            "{e}"
        );
    }

    #[test]
    fn protection_blocks_and_oidc() {
        let text = r#"
team "platform" { members = ["pat"] }
service "ci-prod" {
  oidc {
    issuer    = "https://token.actions.githubusercontent.com"
    audience  = "bulkhead"
    jwks_file = "jwks.json"
    claims    = { repository = "acme/infra" }
  }
}
environment "prod" {
  owner = "team:platform"
  write = ["service:ci-prod"]
  approval {
    required     = 2
    expires      = "1h30m"
    apply_window = "3h"
  }
  pipeline { branches = ["main"] }
  breakglass { allowed = ["user:pat"] }
}
"#;
        let c = Config::parse(Path::new("etc/b.hcl"), text).unwrap();
        let prod = c.environment("prod").unwrap();
        assert!(prod.protected());
        let approval = prod.approval.as_ref().unwrap();
        assert_eq!(approval.required, 2);
        assert_eq!(approval.approvers, vec![Subject::Team("platform".into())]);
        assert_eq!(approval.expires, Duration::from_secs(5400));
        assert_eq!(approval.apply_window, Duration::from_secs(3 * 3600));
        assert_eq!(prod.pipeline.as_ref().unwrap().branches, vec!["main"]);
        assert_eq!(
            prod.breakglass.as_ref().unwrap().max_ttl,
            Duration::from_secs(7200)
        );
        let oidc = c.services["ci-prod"].oidc.as_ref().unwrap();
        assert_eq!(oidc.jwks, Jwks::File("etc/jwks.json".into()));
        assert_eq!(
            oidc.claims,
            vec![("repository".to_string(), "acme/infra".to_string())]
        );

        let e = errors(
            &text
                .replace("required     = 2", "required     = 0")
                .replace("\"1h30m\"", "\"soon\""),
        );
        assert!(e.contains("required must be a whole number"), "{e}");
        assert!(e.contains("expires \"soon\""), "{e}");
        let e = errors(&text.replace(
            "breakglass { allowed = [\"user:pat\"] }",
            "breakglass { allowed = [] }",
        ));
        assert!(e.contains("must name who may break the glass"), "{e}");
    }
}
