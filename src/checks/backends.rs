//! Backend blocks in the repository: environments do not share a location, non-production
//! directories do not point at production's, backends lock, and no credentials are written in
//! them.

use std::collections::BTreeMap;

use super::repo::{blocks, string, Scanned};
use super::{is_production, CheckError, Finding, Severity};
use crate::config::hcl::Block;
use crate::config::Config;
use crate::ownership::Ownership;

/// Attributes that hold secrets; they belong in the environment, not in code.
const SECRETS: &[&str] = &[
    "access_key",
    "secret_key",
    "token",
    "password",
    "client_secret",
    "sas_token",
    "access_token",
];

struct Backend<'a> {
    file: &'a str,
    line: usize,
    environment: Option<&'a str>,
    location: String,
}

pub fn check(config: &Config, scanned: &Scanned, out: &mut Vec<Finding>) -> Result<(), CheckError> {
    let ownership = Ownership::new(config).map_err(CheckError::Usage)?;
    let production = |env: Option<&str>| {
        env.and_then(|e| config.environment(e))
            .is_some_and(is_production)
    };
    let mut found: Vec<Backend> = Vec::new();
    for file in &scanned.files {
        for terraform in blocks(&file.root, "terraform") {
            for backend in blocks(terraform, "backend") {
                let kind = backend.labels.first().map(String::as_str).unwrap_or("");
                let environment = ownership.environment_of(&file.path);
                let finding = |id, severity, message: String, fix: String| Finding {
                    id,
                    severity,
                    file: file.path.clone(),
                    line: Some(backend.line),
                    message,
                    fix,
                };
                for secret in SECRETS.iter().filter(|s| string(backend, s).is_some()) {
                    out.push(finding(
                        "backend-credentials",
                        Severity::Error,
                        format!("the {kind} backend has `{secret}` written in the code"),
                        "remove it and pass it from the environment (e.g. TF_HTTP_PASSWORD, AWS_* variables, -backend-config from a secret store)".into(),
                    ));
                }
                if kind == "pg" && string(backend, "conn_str").is_some_and(has_password) {
                    out.push(finding(
                        "backend-credentials",
                        Severity::Error,
                        "the pg backend's conn_str contains a password".into(),
                        "use PG_CONN_STR or PGPASSWORD from the environment".into(),
                    ));
                }
                if let Some(problem) = missing_lock(kind, backend) {
                    out.push(finding(
                        "backend-without-locking",
                        Severity::Error,
                        problem,
                        "enable locking: use_lockfile = true (or dynamodb_table) for s3, lock_address for http".into(),
                    ));
                }
                if kind == "http" {
                    // A bulkhead address names its environment.
                    let target = string(backend, "address").and_then(bulkhead_environment);
                    if let Some(target) = target.filter(|t| Some(*t) != environment) {
                        if production(Some(target)) && !production(environment) {
                            out.push(finding(
                                "nonprod-backend-points-at-production",
                                Severity::Error,
                                format!(
                                    "this {} directory's backend is production environment {target}'s state",
                                    environment.unwrap_or("unmapped")
                                ),
                                format!("point it at its own environment's address, /v1/state/{}/...", environment.unwrap_or("ENV")),
                            ));
                        }
                    }
                }
                found.push(Backend {
                    file: &file.path,
                    line: backend.line,
                    environment,
                    location: location(kind, backend, file.dir()),
                });
            }
        }
    }
    let mut by_location: BTreeMap<&str, Vec<&Backend>> = BTreeMap::new();
    for b in &found {
        by_location.entry(&b.location).or_default().push(b);
    }
    for (location, users) in by_location {
        let Some(first) = users.first() else { continue };
        for b in users
            .iter()
            .skip(1)
            .filter(|b| b.environment != first.environment)
        {
            let (id, message) = if production(first.environment) != production(b.environment) {
                let (nonprod, prod) = if production(b.environment) {
                    (first, b)
                } else {
                    (b, first)
                };
                (
                    "nonprod-backend-points-at-production",
                    format!(
                        "{} ({}) uses the backend location {location} of production environment {} ({})",
                        nonprod.file,
                        nonprod.environment.unwrap_or("unmapped"),
                        prod.environment.unwrap_or("unmapped"),
                        prod.file
                    ),
                )
            } else {
                (
                    "backend-shared",
                    format!(
                        "{} and {} ({} and {}) share the backend location {location}",
                        first.file,
                        b.file,
                        first.environment.unwrap_or("unmapped"),
                        b.environment.unwrap_or("unmapped")
                    ),
                )
            };
            out.push(Finding {
                id,
                severity: Severity::Error,
                file: b.file.to_string(),
                line: Some(b.line),
                message,
                fix: "give each environment's state its own bucket/key, address or schema".into(),
            });
        }
    }
    Ok(())
}

fn missing_lock(kind: &str, backend: &Block) -> Option<String> {
    let locks = |attr: &str| {
        backend
            .attrs
            .iter()
            .any(|a| a.name == attr && a.value != crate::config::hcl::Literal::Bool(false))
    };
    match kind {
        "s3" if !locks("use_lockfile") && !locks("dynamodb_table") => {
            Some("the s3 backend does not lock: two applies can write the state at once".into())
        }
        "http" if string(backend, "lock_address").is_none() => {
            Some("the http backend has no lock_address: it does not lock".into())
        }
        _ => None,
    }
}

fn has_password(conn: &str) -> bool {
    conn.to_ascii_lowercase().contains("password=")
        || conn
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `/v1/state/{env}/...` in a bulkhead address.
fn bulkhead_environment(address: &str) -> Option<&str> {
    let (_, rest) = address.split_once("/v1/state/")?;
    rest.split('/').next().filter(|e| !e.is_empty())
}

/// Where a backend keeps its state, normalised so that equal locations compare equal.
fn location(kind: &str, b: &Block, dir: &str) -> String {
    let s = |name| string(b, name).unwrap_or("");
    match kind {
        "s3" => format!(
            "s3://{}/{}{}",
            s("bucket"),
            string(b, "workspace_key_prefix")
                .map(|p| format!("{p}/"))
                .unwrap_or_default(),
            s("key")
        ),
        "http" => format!("http:{}", s("address").split('?').next().unwrap_or("")),
        "pg" => format!(
            "pg:{}#{}",
            s("conn_str"),
            string(b, "schema_name").unwrap_or("terraform_remote_state")
        ),
        "gcs" => format!("gcs://{}/{}", s("bucket"), s("prefix")),
        "azurerm" => format!(
            "azurerm://{}/{}/{}",
            s("storage_account_name"),
            s("container_name"),
            s("key")
        ),
        "local" => format!(
            "local:{dir}/{}",
            string(b, "path").unwrap_or("terraform.tfstate")
        ),
        other => {
            let mut attrs: Vec<String> = b
                .attrs
                .iter()
                .map(|a| format!("{}={:?}", a.name, a.value))
                .collect();
            attrs.sort();
            format!("{other}:{}", attrs.join(","))
        }
    }
}
