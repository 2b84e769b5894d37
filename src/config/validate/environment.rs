//! Validation of an `environment` block: its owner and access lists, storage and limits, and
//! its protection blocks (approval, pipeline, break-glass).

use std::collections::BTreeMap;

use super::attrs::attr;
use super::{Named, Validator};
use crate::config::hcl::{Block, Literal};
use crate::config::model::{APPROVAL_EXPIRES, BREAKGLASS_MAX_TTL, REQUIRED_MAX};
use crate::config::{
    Approval, Binding, Breakglass, Environment, Pipeline, Subject, APPLY_WINDOW,
    DEFAULT_MAX_PLAN_SIZE, DEFAULT_MAX_STATE_SIZE,
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
                "write_from",
                "read_from",
            ],
        );
        let mut named = Vec::new();
        // A missing or bad owner is reported; the empty team only stands in for it.
        let owner = self
            .owner(block, &ctx, &mut named)
            .unwrap_or_else(|| Subject::Team(String::new()));
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
        let paths = self.strings(block, "paths", &ctx);
        let storage = self.string(block, "storage", &ctx);
        if let (Some(url), Some(a)) = (&storage, attr(block, "storage")) {
            if let Err(problem) = super::super::storage::check_url(url) {
                self.error(a.line, format!("{ctx}: storage: {problem}"));
            }
        }
        let max_state_size = self.size(block, "max_state_size", &ctx, DEFAULT_MAX_STATE_SIZE);
        let max_plan_size = self.size(block, "max_plan_size", &ctx, DEFAULT_MAX_PLAN_SIZE);
        let lock_lease = self.duration(block, "lock_lease", &ctx);
        let (approval, pipeline, breakglass) = self.protection(block, &ctx, &owner, &mut named);
        let write_from = self.networks(block, "write_from", &ctx);
        let read_from = self.networks(block, "read_from", &ctx);
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
            personal: None,
            write_from,
            read_from,
        };
        (env, named)
    }

    fn owner(&mut self, block: &Block, ctx: &str, named: &mut Vec<Named>) -> Option<Subject> {
        let Some(a) = attr(block, "owner") else {
            self.error(
                block.line,
                format!("{ctx} has no owner: add owner = \"team:NAME\" (the team or person accountable for it)"),
            );
            return None;
        };
        let Literal::String(text) = &a.value else {
            self.error(
                a.line,
                format!("{ctx}: owner must be a string, not {}", a.value.kind()),
            );
            return None;
        };
        match Named::parse(text, a.line, "owner") {
            Ok(n) => {
                let owner = n.subject.clone();
                named.push(n);
                Some(owner)
            }
            Err(problem) => {
                self.error(a.line, format!("{ctx}: owner {problem}"));
                None
            }
        }
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
                "approval" => approval = Some(self.approval(inner, &inner_ctx, owner, named)),
                "pipeline" => pipeline = Some(self.pipeline(inner, &inner_ctx)),
                "breakglass" => breakglass = Some(self.breakglass(inner, &inner_ctx, named)),
                other => self.error(
                    inner.line,
                    format!("unknown block `{other}` in {ctx}: expected approval, pipeline or breakglass"),
                ),
            }
        }
        if approval.is_none()
            && pipeline
                .as_ref()
                .is_some_and(|p| p.bind != Binding::default())
        {
            self.error(
                line_of_bind(block),
                format!("{ctx}: `pipeline {{ bind }}` binds the apply of a change, and this environment has no approval block, so no change is ever applied: add `approval {{}}` or remove `bind`"),
            );
        }
        (approval, pipeline, breakglass)
    }

    fn approval(
        &mut self,
        block: &Block,
        ctx: &str,
        owner: &Subject,
        named: &mut Vec<Named>,
    ) -> Approval {
        self.only_attrs(
            block,
            ctx,
            &["required", "approvers", "expires", "apply_window"],
        );
        let required = self
            .whole_number(block, "required", REQUIRED_MAX, || {
                format!("{ctx}: required must be a whole number from 1 to {REQUIRED_MAX}")
            })
            .map_or(1, |n| n as u32);
        let approvers = self
            .subjects(block, "approvers", ctx, named)
            .unwrap_or_else(|| vec![owner.clone()]);
        let expires = self
            .duration(block, "expires", ctx)
            .unwrap_or(APPROVAL_EXPIRES);
        let apply_window = self
            .duration(block, "apply_window", ctx)
            .unwrap_or(APPLY_WINDOW);
        Approval {
            required,
            approvers,
            expires,
            apply_window,
        }
    }

    fn pipeline(&mut self, block: &Block, ctx: &str) -> Pipeline {
        self.only_attrs(block, ctx, &["branches", "bind"]);
        Pipeline {
            branches: self.strings(block, "branches", ctx),
            bind: self.binding(block, ctx),
        }
    }

    /// `bind = "commit"`, `"plan"`, or a list of both; absent: nothing bound.
    fn binding(&mut self, block: &Block, ctx: &str) -> Binding {
        let Some(a) = attr(block, "bind") else {
            return Binding::default();
        };
        let words: Vec<String> = match &a.value {
            Literal::String(s) => vec![s.clone()],
            Literal::List(_) => self.strings(block, "bind", ctx),
            other => {
                self.error(
                    a.line,
                    format!("{ctx}: `bind` must be \"commit\", \"plan\" or [\"commit\", \"plan\"], not {}", other.kind()),
                );
                return Binding::default();
            }
        };
        let mut bind = Binding::default();
        for word in words {
            match word.as_str() {
                "commit" => bind.commit = true,
                "plan" => bind.plan = true,
                other => self.error(
                    a.line,
                    format!("{ctx}: `bind` names `{other}`: an apply can be bound to its \"commit\" (the pipeline's OIDC `sha` claim) or its \"plan\" (attested with `bulkhead change attest`)"),
                ),
            }
        }
        bind
    }

    fn breakglass(&mut self, block: &Block, ctx: &str, named: &mut Vec<Named>) -> Breakglass {
        self.only_attrs(block, ctx, &["allowed", "max_ttl"]);
        let allowed = self
            .subjects(block, "allowed", ctx, named)
            .unwrap_or_default();
        if allowed.is_empty() {
            self.error(
                block.line,
                format!("{ctx}: `allowed` must name who may break the glass"),
            );
        }
        let max_ttl = self
            .duration(block, "max_ttl", ctx)
            .unwrap_or(BREAKGLASS_MAX_TTL);
        Breakglass { allowed, max_ttl }
    }
}

/// The line of a `bind` inside the `pipeline` block of `block`.
fn line_of_bind(block: &Block) -> usize {
    block
        .blocks
        .iter()
        .find(|b| b.kind == "pipeline")
        .map_or(block.line, |p| super::attrs::line_of(p, "bind"))
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
    fn an_apply_is_bound_to_its_commit_its_plan_or_both() {
        let with = |bind: &str| {
            GOOD.replace(
                "max_state_size = \"1MiB\"",
                &format!(
                    "max_state_size = \"1MiB\"\n  approval {{}}\n  pipeline {{ bind = {bind} }}"
                ),
            )
        };
        let bind = |text: &str| {
            let c = Config::parse(Path::new("b.hcl"), text).unwrap();
            c.environment("prod").unwrap().binding().describe()
        };
        assert_eq!(bind(GOOD), "none");
        assert_eq!(bind(&with("\"commit\"")), "commit");
        assert_eq!(bind(&with("\"plan\"")), "plan");
        assert_eq!(bind(&with("[\"plan\", \"commit\"]")), "commit and plan");
        let e = errors(&with("\"tree\""));
        assert!(e.contains("`bind` names `tree`"), "{e}");
        let e = errors(&with("3"));
        assert!(e.contains("`bind` must be"), "{e}");
        let unprotected = GOOD.replace(
            "max_state_size = \"1MiB\"",
            "max_state_size = \"1MiB\"\n  pipeline {\n    bind = \"plan\"\n  }",
        );
        let e = errors(&unprotected);
        assert!(e.contains("has no approval block"), "{e}");
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
