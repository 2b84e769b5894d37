//! IAM policies in the repository that let anything write production's state objects.
//!
//! Each policy document (`data "aws_iam_policy_document"` blocks, and the JSON `policy` of
//! `aws_iam_policy`, `aws_iam_role_policy`, `aws_iam_user_policy` resources) is evaluated as
//! IAM evaluates it for `s3:PutObject` and `s3:DeleteObject` on production state objects: an
//! explicit Deny wins, an Allow is needed, and actions and resources match with `*` and `?`.

use super::repo::{blocks, string, Scanned, TfFile};
use super::{is_production, Finding, Severity};
use crate::config::hcl::{Block, Literal};
use crate::config::Config;

const WRITES: [&str; 2] = ["s3:PutObject", "s3:DeleteObject"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

pub fn check(config: &Config, scanned: &Scanned, out: &mut Vec<Finding>) {
    let prod: Vec<&str> = config
        .environments
        .iter()
        .filter(|e| is_production(e))
        .map(|e| e.name.as_str())
        .collect();
    if prod.is_empty() {
        return;
    }
    for file in &scanned.files {
        for (name, line, statements) in documents(file) {
            for object in probes(&statements, &prod) {
                let writes: Vec<&str> = WRITES
                    .into_iter()
                    .filter(|action| allowed(&statements, action, &object))
                    .collect();
                if writes.is_empty() {
                    continue;
                }
                out.push(Finding {
                    id: "iam-allows-production-state-write",
                    severity: Severity::Error,
                    file: file.path.clone(),
                    line: Some(line),
                    message: format!(
                        "{name} allows {} on production state {object}, and no statement denies it",
                        writes.join(" and ")
                    ),
                    fix: "narrow the Allow to non-production prefixes, or add a Deny of s3:PutObject/s3:DeleteObject on the production prefix for everyone but the pipeline".into(),
                });
                break;
            }
        }
    }
}

/// IAM's decision: some Allow matches and no Deny matches.
pub fn allowed(statements: &[Statement], action: &str, resource: &str) -> bool {
    let matches = |s: &&Statement| {
        s.actions
            .iter()
            .any(|a| wildcard(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
            && s.resources.iter().any(|r| wildcard(r, resource))
    };
    let applicable: Vec<&Statement> = statements.iter().filter(matches).collect();
    applicable.iter().any(|s| s.allow) && !applicable.iter().any(|s| !s.allow)
}

/// IAM wildcards: `*` any run of characters, `?` any one.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Production state objects to ask about: for every bucket the statements name, the object
/// terraform's s3 backend writes for a production workspace (`env:/<prod>/terraform.tfstate`).
fn probes(statements: &[Statement], prod: &[&str]) -> Vec<String> {
    let mut buckets: Vec<String> = Vec::new();
    for r in statements.iter().flat_map(|s| &s.resources) {
        if let Some(rest) =
            r.strip_prefix("arn:aws:s3:::")
                .or(if r == "*" { Some("*") } else { None })
        {
            let bucket = rest
                .split('/')
                .next()
                .unwrap_or("*")
                .replace(['*', '?'], "x");
            let bucket = if bucket.is_empty() {
                "x".to_string()
            } else {
                bucket
            };
            if !buckets.contains(&bucket) {
                buckets.push(bucket);
            }
        }
    }
    buckets
        .iter()
        .flat_map(|b| {
            prod.iter()
                .map(move |p| format!("arn:aws:s3:::{b}/env:/{p}/terraform.tfstate"))
        })
        .collect()
}

/// The policy documents of a file: name, line, statements.
fn documents(file: &TfFile) -> Vec<(String, usize, Vec<Statement>)> {
    let mut out = Vec::new();
    for data in blocks(&file.root, "data") {
        if data.labels.first().map(String::as_str) != Some("aws_iam_policy_document") {
            continue;
        }
        let statements = blocks(data, "statement")
            .map(|s| Statement {
                allow: string(s, "effect").is_none_or(|e| e == "Allow"),
                actions: strings(s, "actions"),
                resources: strings(s, "resources"),
            })
            .collect();
        out.push((label(data), data.line, statements));
    }
    for resource in blocks(&file.root, "resource") {
        let kind = resource.labels.first().map(String::as_str).unwrap_or("");
        if !matches!(
            kind,
            "aws_iam_policy"
                | "aws_iam_role_policy"
                | "aws_iam_user_policy"
                | "aws_iam_group_policy"
        ) {
            continue;
        }
        let json = match resource
            .attrs
            .iter()
            .find(|a| a.name == "policy")
            .map(|a| &a.value)
        {
            Some(Literal::String(text)) => serde_json::from_str(text).ok(),
            Some(value) => Some(to_json(value)),
            None => None,
        };
        if let Some(json) = json {
            out.push((label(resource), resource.line, json_statements(&json)));
        }
    }
    out
}

fn label(block: &Block) -> String {
    format!(
        "{}.{}",
        block.labels.first().map(String::as_str).unwrap_or(""),
        block.labels.get(1).map(String::as_str).unwrap_or("")
    )
}

fn strings(block: &Block, name: &str) -> Vec<String> {
    match block
        .attrs
        .iter()
        .find(|a| a.name == name)
        .map(|a| &a.value)
    {
        Some(Literal::List(items)) => items
            .iter()
            .filter_map(|i| match i {
                Literal::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        Some(Literal::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn to_json(value: &Literal) -> serde_json::Value {
    match value {
        Literal::String(s) => s.clone().into(),
        Literal::Number(n) => serde_json::json!(n),
        Literal::Bool(b) => (*b).into(),
        Literal::List(items) => items.iter().map(to_json).collect(),
        Literal::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn json_statements(policy: &serde_json::Value) -> Vec<Statement> {
    let list = |v: Option<&serde_json::Value>| -> Vec<String> {
        match v {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let statements = match policy.get("Statement") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(single) => vec![single.clone()],
        None => Vec::new(),
    };
    statements
        .iter()
        .map(|s| Statement {
            allow: s.get("Effect").and_then(|e| e.as_str()) != Some("Deny"),
            actions: list(s.get("Action")),
            resources: list(s.get("Resource")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(allow: bool, actions: &[&str], resources: &[&str]) -> Statement {
        Statement {
            allow,
            actions: actions.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("s3:*", "s3:putobject"));
        assert!(wildcard(
            "arn:aws:s3:::b/env:/*",
            "arn:aws:s3:::b/env:/prod/x"
        ));
        assert!(wildcard(
            "arn:aws:s3:::b/env:/pro?/*",
            "arn:aws:s3:::b/env:/prod/x"
        ));
        assert!(!wildcard(
            "arn:aws:s3:::b/env:/dev/*",
            "arn:aws:s3:::b/env:/prod/x"
        ));
        assert!(wildcard("*", ""));
    }

    #[test]
    fn explicit_deny_wins() {
        let prod = "arn:aws:s3:::b/env:/prod/terraform.tfstate";
        let allow_all = st(true, &["s3:*"], &["arn:aws:s3:::b/*"]);
        let deny_prod = st(
            false,
            &["s3:PutObject", "s3:DeleteObject"],
            &["arn:aws:s3:::b/env:/prod/*"],
        );
        assert!(allowed(
            std::slice::from_ref(&allow_all),
            "s3:PutObject",
            prod
        ));
        assert!(!allowed(
            &[allow_all.clone(), deny_prod],
            "s3:PutObject",
            prod
        ));
        assert!(!allowed(
            &[st(true, &["s3:GetObject"], &["*"])],
            "s3:PutObject",
            prod
        ));
    }
}
