//! Findings for people (a table and a summary line), for scripts (JSON), and for code
//! scanning (SARIF 2.1.0).

use super::{Finding, Severity, RULES};

pub fn human(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let at = match f.line {
            Some(line) => format!("{}:{line}", f.file),
            None => f.file.clone(),
        };
        let severity = match f.severity {
            Severity::Error => "ERROR",
            Severity::Warning => "warning",
        };
        out.push_str(&format!(
            "{severity:<8} {:<38} {at}\n         {}\n         fix: {}\n",
            f.id, f.message, f.fix
        ));
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    out.push_str(&if findings.is_empty() {
        "No findings: every check passed.\n".to_string()
    } else {
        format!("{errors} error(s), {warnings} warning(s).\n")
    });
    out
}

pub fn sarif(findings: &[Finding]) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = RULES
        .iter()
        .map(|(id, text)| {
            serde_json::json!({
                "id": id,
                "shortDescription": { "text": text },
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            let mut region = serde_json::Map::new();
            region.insert("startLine".into(), f.line.unwrap_or(1).into());
            serde_json::json!({
                "ruleId": f.id,
                "ruleIndex": RULES.iter().position(|(id, _)| *id == f.id).unwrap_or(0),
                "level": match f.severity { Severity::Error => "error", Severity::Warning => "warning" },
                "message": { "text": format!("{} Fix: {}", f.message, f.fix) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": f.file },
                        "region": region,
                    }
                }],
            })
        })
        .collect();
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "bulkhead",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
