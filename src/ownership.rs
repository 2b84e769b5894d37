//! Which environment a repository path belongs to: each environment's `paths`, read with
//! CODEOWNERS semantics (gitignore-style globs; the last matching pattern wins).

use globset::{GlobBuilder, GlobMatcher};

use crate::config::Config;

pub struct Ownership {
    /// In config order; later rules win.
    rules: Vec<Rule>,
}

struct Rule {
    environment: String,
    matcher: GlobMatcher,
}

impl Ownership {
    pub fn new(config: &Config) -> Result<Ownership, String> {
        let mut rules = Vec::new();
        for env in &config.environments {
            for pattern in &env.paths {
                let glob = to_glob(pattern);
                let matcher = GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| format!("environment \"{}\": path `{pattern}`: {e}", env.name))?
                    .compile_matcher();
                rules.push(Rule {
                    environment: env.name.clone(),
                    matcher,
                });
            }
        }
        Ok(Ownership { rules })
    }

    /// The environment that owns `path` (relative to the repository root, with `/`).
    pub fn environment_of(&self, path: &str) -> Option<&str> {
        self.rules
            .iter()
            .rev()
            .find(|r| r.matcher.is_match(path))
            .map(|r| r.environment.as_str())
    }

    /// Every environment with a pattern matching `path`.
    pub fn all_environments_of(&self, path: &str) -> Vec<&str> {
        let mut envs: Vec<&str> = Vec::new();
        for r in self.rules.iter().filter(|r| r.matcher.is_match(path)) {
            if !envs.contains(&r.environment.as_str()) {
                envs.push(&r.environment);
            }
        }
        envs
    }
}

/// CODEOWNERS pattern → glob: a leading `/` anchors (patterns are anchored anyway), a trailing
/// `/` means everything below, a pattern without `/` matches at any depth.
fn to_glob(pattern: &str) -> String {
    let anchored = pattern.trim_start_matches('/');
    let mut glob = if pattern.starts_with('/') || anchored.trim_end_matches('/').contains('/') {
        anchored.to_string()
    } else {
        format!("**/{anchored}")
    };
    if glob.ends_with('/') {
        glob.push_str("**");
    } else if !glob.contains('*') {
        // A plain directory name owns what is below it, as in CODEOWNERS.
        glob = format!("{{{glob},{glob}/**}}");
    }
    glob
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn last_matching_pattern_wins() {
        let config = Config::parse(
            Path::new("b.hcl"),
            r#"
team "t" { members = ["a"] }
environment "dev"  {
  owner = "team:t"
  paths = ["envs/**"]
}
environment "prod" {
  owner = "team:t"
  paths = ["envs/prod/", "*.prod.tf"]
}
"#,
        )
        .unwrap();
        let o = Ownership::new(&config).unwrap();
        assert_eq!(o.environment_of("envs/dev/main.tf"), Some("dev"));
        assert_eq!(o.environment_of("envs/prod/main.tf"), Some("prod"));
        assert_eq!(o.environment_of("modules/x/y.prod.tf"), Some("prod"));
        assert_eq!(o.environment_of("modules/x/main.tf"), None);
        assert_eq!(
            o.all_environments_of("envs/prod/main.tf"),
            vec!["dev", "prod"]
        );
    }
}
