//! Reading a plan: the JSON that `terraform show -json plan.tfplan` prints, summarised as a
//! reviewer reads it. Pure.
//!
//! Plans are large (they carry the planned state and every resource's before and after), so
//! only the parts a summary needs are read into memory: everything else is skipped as it is
//! parsed, never built into a JSON tree. A plan is held once, as the bytes it came in.

use serde::{Deserialize, Serialize};

/// What a plan does, by resource address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub terraform_version: Option<String>,
    pub add: Vec<String>,
    pub change: Vec<String>,
    /// Destroyed and created again.
    pub replace: Vec<String>,
    pub destroy: Vec<String>,
    /// Addresses the apply writes to the state without changing what they stand for: objects
    /// that changed outside terraform (`resource_drift`, refreshed into the state), moved ones
    /// (both addresses) and imported ones. Not counted; a write touching them is within the plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_only: Vec<String>,
}

impl PlanSummary {
    /// Terraform's own count line: replacements count as an add and a destroy.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.add.len() + self.replace.len(),
            self.change.len(),
            self.destroy.len() + self.replace.len(),
        )
    }

    pub fn destroys_anything(&self) -> bool {
        !self.destroy.is_empty() || !self.replace.is_empty()
    }
}

/// Summarises `terraform show -json` output; anything else is refused with the reason.
pub fn summarize(bytes: &[u8]) -> Result<PlanSummary, String> {
    use serde::de::IgnoredAny;
    // Unknown fields (`before`, `after`, `configuration`, ...) are skipped by serde; what is
    // only checked for presence is read as `IgnoredAny`, which skips it too.
    #[derive(Deserialize)]
    struct Plan {
        format_version: Option<String>,
        terraform_version: Option<String>,
        planned_values: Option<IgnoredAny>,
        #[serde(default)]
        resource_changes: Vec<ResourceChange>,
        #[serde(default)]
        resource_drift: Vec<ResourceChange>,
    }
    #[derive(Deserialize)]
    struct ResourceChange {
        address: String,
        previous_address: Option<String>,
        change: Change,
    }
    #[derive(Deserialize)]
    struct Change {
        actions: Vec<String>,
        importing: Option<IgnoredAny>,
    }
    let not_a_plan = "it is not the JSON of a saved plan: run `terraform plan -out plan.tfplan` then `terraform show -json plan.tfplan > plan.json`";
    let plan: Plan = serde_json::from_slice(bytes).map_err(|e| format!("{not_a_plan} ({e})"))?;
    if plan.format_version.is_none() || plan.planned_values.is_none() {
        return Err(not_a_plan.to_string());
    }
    let mut summary = PlanSummary {
        terraform_version: plan.terraform_version,
        ..PlanSummary::default()
    };
    for rc in plan.resource_drift {
        summary.state_only.push(rc.address);
    }
    for rc in plan.resource_changes {
        if let Some(previous) = rc.previous_address {
            summary.state_only.extend([previous, rc.address.clone()]);
        } else if rc.change.importing.is_some() {
            summary.state_only.push(rc.address.clone());
        }
        let actions: Vec<&str> = rc.change.actions.iter().map(String::as_str).collect();
        let bucket = match actions.as_slice() {
            ["create"] => &mut summary.add,
            ["update"] => &mut summary.change,
            ["delete"] => &mut summary.destroy,
            ["delete", "create"] | ["create", "delete"] => &mut summary.replace,
            _ => continue, // no-op, read
        };
        bucket.push(rc.address);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_actions_like_terraform_counts_them() {
        let plan = br#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},
          "resource_changes":[
            {"address":"a.x","change":{"actions":["create"]}},
            {"address":"a.y","change":{"actions":["update"]}},
            {"address":"a.z","change":{"actions":["delete"]}},
            {"address":"a.w","change":{"actions":["delete","create"]}},
            {"address":"a.v","change":{"actions":["no-op"]}}]}"#;
        let s = summarize(plan).unwrap();
        assert_eq!(s.counts(), (2, 1, 2));
        assert_eq!(s.destroy, vec!["a.z"]);
        assert!(s.destroys_anything());
    }

    #[test]
    fn drifted_moved_and_imported_objects_are_written_to_the_state_but_not_counted() {
        let plan = br#"{"format_version":"1.2","planned_values":{},
          "resource_drift":[{"address":"a.drifted","change":{"actions":["update"]}}],
          "resource_changes":[
            {"address":"a.new","previous_address":"a.old","change":{"actions":["no-op"]}},
            {"address":"a.imported","change":{"actions":["no-op"],"importing":{"id":"i-1"}}}]}"#;
        let s = summarize(plan).unwrap();
        assert_eq!(s.counts(), (0, 0, 0));
        assert_eq!(
            s.state_only,
            vec!["a.drifted", "a.old", "a.new", "a.imported"]
        );
    }

    #[test]
    fn refuses_what_is_not_a_plan() {
        assert!(summarize(b"{}").is_err());
        assert!(summarize(b"not json").is_err());
        assert!(summarize(br#"{"version":4,"serial":1,"lineage":"x"}"#).is_err());
    }
}
