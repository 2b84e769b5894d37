//! A refresh-only plan read as drift: the JSON that `terraform show -json drift.tfplan` prints
//! for `terraform plan -refresh-only -out drift.tfplan`, reduced to what changed outside
//! terraform, resource by resource and attribute by attribute, sensitive values masked. Pure.
//!
//! Only a saved plan's JSON is read. The machine-readable output of `terraform plan -json` is
//! a stream of UI messages, not a plan, and is refused with the commands to run instead.
//!
//! A plan that is not refresh-only (a plain `terraform plan`) is accepted too: it carries the
//! same refresh in `resource_drift`, and only that is read; its `resource_changes` (what the
//! configuration would change) are not drift.
//!
//! Plans are large and most of one is not drift: `planned_values`, `prior_state`,
//! `configuration` and the rest are skipped as they are parsed, never built. Drift entries
//! are few, and only theirs are read: attribute by attribute, the first [`DRIFTED_MAX`] of
//! them, each value cut short.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::cut;
use crate::history::AttributeChange;

/// The most drifted resources a report lists: with [`ATTRIBUTES_MAX`] and [`VALUE_MAX`], a
/// stored report stays under about 2 MB whatever the plan.
pub const DRIFTED_MAX: usize = 200;

/// The most attributes listed for one resource.
const ATTRIBUTES_MAX: usize = 20;

/// The most bytes of one value shown.
const VALUE_MAX: usize = 200;

const MASK: &str = "(sensitive)";

/// One resource that changed outside terraform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drifted {
    pub address: String,
    /// What happened outside terraform, from the drift entry's actions: `changed`
    /// (`["update"]`), `deleted` (`["delete"]`), or the actions joined with `+` otherwise.
    pub how: String,
    /// Top-level attributes whose value differs between `before` and `after`, by name, values
    /// as compact JSON text (each cut to 200 bytes), sensitive ones as `(sensitive)`; at most
    /// 20 per resource.
    pub attributes: Vec<AttributeChange>,
}

/// What a refresh-only plan found changed outside terraform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub terraform_version: Option<String>,
    /// At most [`DRIFTED_MAX`] (the first in the plan), sorted by address.
    pub drifted: Vec<Drifted>,
    /// How many drifted in all (more than `drifted.len()` when cut).
    pub count: usize,
}

/// Why a document is not read as a drift report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("{0}, not the JSON of a saved plan: run `terraform plan -refresh-only -out drift.tfplan && terraform show -json drift.tfplan > drift.json` and give drift.json")]
    NotAPlan(String),
}

impl Report {
    /// Reads the JSON of a saved plan (`terraform show -json`); anything else is refused with
    /// what it seems to be.
    pub fn parse(plan: &[u8]) -> Result<Report, ReportError> {
        #[derive(Deserialize)]
        struct Plan {
            format_version: Option<IgnoredAny>,
            terraform_version: Option<String>,
            planned_values: Option<IgnoredAny>,
            // Present only in what is not a plan, to say what it is instead.
            lineage: Option<IgnoredAny>,
            values: Option<IgnoredAny>,
            #[serde(default)]
            resource_drift: Option<Drift>,
        }
        let parsed: Plan = serde_json::from_slice(plan).map_err(|e| {
            // `terraform plan -json` prints one JSON message a line, each with `@level`.
            let first = plan.split(|&b| b == b'\n').next().unwrap_or_default();
            let is_stream = serde_json::from_slice::<BTreeMap<String, IgnoredAny>>(first)
                .is_ok_and(|line| line.contains_key("@level"));
            ReportError::NotAPlan(if is_stream {
                "it is the output of `terraform plan -json`, one UI message a line".to_string()
            } else {
                format!("it could not be read ({e})")
            })
        })?;
        if parsed.format_version.is_none() || parsed.planned_values.is_none() {
            let what = if parsed.lineage.is_some() {
                "it is a state file"
            } else if parsed.values.is_some() {
                "it is the JSON of a state (`terraform show -json` without a plan file)"
            } else {
                "it has no format_version and planned_values"
            };
            return Err(ReportError::NotAPlan(what.to_string()));
        }
        let Drift { mut drifted, count } = parsed.resource_drift.unwrap_or_default();
        drifted.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(Report {
            terraform_version: parsed.terraform_version,
            drifted,
            count,
        })
    }

    /// Whether nothing changed outside terraform.
    pub fn is_clean(&self) -> bool {
        self.count == 0
    }

    /// The addresses of the drifted resources listed, sorted.
    pub fn addresses(&self) -> Vec<&str> {
        self.drifted.iter().map(|d| d.address.as_str()).collect()
    }
}

/// One entry of `resource_drift`, its values kept as the text they are in the plan.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    address: Cow<'a, str>,
    #[serde(borrow)]
    change: Change<'a>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(default)]
    actions: Vec<String>,
    #[serde(borrow, default)]
    before: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after: Option<&'a RawValue>,
    #[serde(borrow, default)]
    before_sensitive: Option<&'a RawValue>,
    #[serde(borrow, default)]
    after_sensitive: Option<&'a RawValue>,
}

/// `resource_drift`, read one entry at a time: every entry counted, the first
/// [`DRIFTED_MAX`] kept.
#[derive(Default)]
struct Drift {
    drifted: Vec<Drifted>,
    count: usize,
}

impl<'de> Deserialize<'de> for Drift {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Drift;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of resource changes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Drift, A::Error> {
                let mut out = Drift::default();
                while let Some(entry) = seq.next_element::<Entry<'de>>()? {
                    let Some(how) = how(&entry.change.actions) else {
                        continue;
                    };
                    out.count += 1;
                    if out.drifted.len() < DRIFTED_MAX {
                        out.drifted.push(Drifted {
                            address: entry.address.into_owned(),
                            how,
                            attributes: attributes(&entry.change),
                        });
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(Each)
    }
}

/// What a drift entry's actions say happened; `None` when nothing did (`["no-op"]`, or no
/// actions at all).
fn how(actions: &[String]) -> Option<String> {
    match actions {
        [] => None,
        [one] if one == "no-op" => None,
        [one] if one == "update" => Some("changed".to_string()),
        [one] if one == "delete" => Some("deleted".to_string()),
        _ => Some(actions.join("+")),
    }
}

/// The top-level attributes of an object value; none when it is `null` (a deleted object) or
/// not an object.
fn object(raw: Option<&RawValue>) -> BTreeMap<String, Value> {
    raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

/// The attributes that differ between a drift entry's `before` and `after`.
fn attributes(change: &Change<'_>) -> Vec<AttributeChange> {
    let (before, after) = (object(change.before), object(change.after));
    let marks = |raw: Option<&RawValue>| -> Option<Value> {
        raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
    };
    let (before_sensitive, after_sensitive) = (
        marks(change.before_sensitive),
        marks(change.after_sensitive),
    );
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .take(ATTRIBUTES_MAX)
        .map(|name| {
            let masked = sensitive(before_sensitive.as_ref(), name)
                || sensitive(after_sensitive.as_ref(), name);
            let show = |value: Option<&Value>| {
                value.map(|v| {
                    if masked {
                        MASK.to_string()
                    } else {
                        cut(v.to_string(), VALUE_MAX)
                    }
                })
            };
            AttributeChange {
                name: name.clone(),
                before: show(before.get(name)),
                after: show(after.get(name)),
            }
        })
        .collect()
}

/// Whether a `*_sensitive` mark covers attribute `name`: the whole value is marked (`true`),
/// or the attribute's mark is `true` or holds a `true` anywhere (a sensitive element of a list,
/// a sensitive key of a map or block).
fn sensitive(marks: Option<&Value>, name: &str) -> bool {
    fn any_true(mark: &Value) -> bool {
        match mark {
            Value::Bool(b) => *b,
            Value::Array(items) => items.iter().any(any_true),
            Value::Object(fields) => fields.values().any(any_true),
            _ => false,
        }
    }
    match marks {
        Some(Value::Bool(all)) => *all,
        Some(Value::Object(fields)) => fields.get(name).is_some_and(any_true),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What terraform 1.11.4 prints with `terraform show -json drift.tfplan` after
    /// `terraform plan -refresh-only -out drift.tfplan`, when a `terraform_data` with a
    /// sensitive input changed outside terraform and another was deleted.
    const REFRESH_ONLY: &str = r#"{
  "format_version": "1.2",
  "terraform_version": "1.11.4",
  "planned_values": {
    "root_module": {
      "resources": [
        {
          "address": "terraform_data.x",
          "mode": "managed",
          "type": "terraform_data",
          "name": "x",
          "provider_name": "terraform.io/builtin/terraform",
          "schema_version": 0,
          "values": {"id": "c8a3f1d2", "input": "s3cret-b", "output": "b", "triggers_replace": null},
          "sensitive_values": {"input": true}
        }
      ]
    }
  },
  "resource_drift": [
    {
      "address": "terraform_data.x",
      "mode": "managed",
      "type": "terraform_data",
      "name": "x",
      "provider_name": "terraform.io/builtin/terraform",
      "change": {
        "actions": ["update"],
        "before": {"id": "c8a3f1d2", "input": "s3cret-a", "output": "a", "triggers_replace": null},
        "after": {"id": "c8a3f1d2", "input": "s3cret-b", "output": "b", "triggers_replace": null},
        "after_unknown": {},
        "before_sensitive": {"input": true},
        "after_sensitive": {"input": true}
      }
    },
    {
      "address": "terraform_data.gone",
      "mode": "managed",
      "type": "terraform_data",
      "name": "gone",
      "provider_name": "terraform.io/builtin/terraform",
      "change": {
        "actions": ["delete"],
        "before": {"id": "9e1b", "input": null, "output": null, "triggers_replace": null},
        "after": null,
        "after_unknown": {},
        "before_sensitive": {},
        "after_sensitive": false
      }
    },
    {
      "address": "terraform_data.same",
      "mode": "managed",
      "type": "terraform_data",
      "name": "same",
      "provider_name": "terraform.io/builtin/terraform",
      "change": {
        "actions": ["no-op"],
        "before": {"id": "77"},
        "after": {"id": "77"},
        "after_unknown": {},
        "before_sensitive": {},
        "after_sensitive": {}
      }
    }
  ],
  "prior_state": {
    "format_version": "1.0",
    "terraform_version": "1.11.4",
    "values": {"root_module": {"resources": [{"address": "terraform_data.x", "values": {"input": "s3cret-a"}}]}}
  },
  "configuration": {
    "provider_config": {"terraform": {"name": "terraform", "full_name": "terraform.io/builtin/terraform"}},
    "root_module": {"resources": [{"address": "terraform_data.x", "mode": "managed", "type": "terraform_data", "name": "x", "provider_config_key": "terraform", "expressions": {"input": {"references": ["var.secret"]}}, "schema_version": 0}]}
  },
  "relevant_attributes": [{"resource": "terraform_data.x", "attribute": ["input"]}],
  "timestamp": "2025-05-02T09:14:03Z",
  "applyable": true,
  "complete": true,
  "errored": false
}"#;

    fn change(name: &str, before: Option<&str>, after: Option<&str>) -> AttributeChange {
        AttributeChange {
            name: name.into(),
            before: before.map(str::to_string),
            after: after.map(str::to_string),
        }
    }

    #[test]
    fn reads_a_refresh_only_plan_with_sensitive_values_masked() {
        let report = Report::parse(REFRESH_ONLY.as_bytes()).unwrap();
        assert_eq!(report.terraform_version.as_deref(), Some("1.11.4"));
        assert_eq!(report.count, 2, "a no-op entry is not drift");
        assert!(!report.is_clean());
        assert_eq!(
            report.addresses(),
            vec!["terraform_data.gone", "terraform_data.x"]
        );
        let x = &report.drifted[1];
        assert_eq!(x.how, "changed");
        assert_eq!(
            x.attributes,
            vec![
                change("input", Some(MASK), Some(MASK)),
                change("output", Some("\"a\""), Some("\"b\"")),
            ]
        );
        let gone = &report.drifted[0];
        assert_eq!(gone.how, "deleted");
        assert_eq!(gone.attributes[0], change("id", Some("\"9e1b\""), None));
        assert_eq!(gone.attributes[1], change("input", Some("null"), None));

        let text = serde_json::to_string(&report).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_plan_with_no_drift_is_clean() {
        let plan = br#"{"format_version":"1.2","terraform_version":"1.11.4","planned_values":{},"applyable":false}"#;
        let report = Report::parse(plan).unwrap();
        assert!(report.is_clean());
        assert_eq!(report.addresses(), Vec::<&str>::new());
        let plan = br#"{"format_version":"1.2","planned_values":{},"resource_drift":null}"#;
        assert!(Report::parse(plan).unwrap().is_clean());
    }

    #[test]
    fn a_plan_that_changes_resources_is_read_for_its_drift_only() {
        let plan = br#"{"format_version":"1.2","planned_values":{},
          "resource_drift":[{"address":"aws_s3_bucket.logs","change":{"actions":["update"],
            "before":{"tags":{"team":"a"}},"after":{"tags":{"team":"b"}}}}],
          "resource_changes":[
            {"address":"aws_s3_bucket.new","change":{"actions":["create"],"before":null,"after":{}}},
            {"address":"aws_s3_bucket.logs","change":{"actions":["no-op"]}}]}"#;
        let report = Report::parse(plan).unwrap();
        assert_eq!(report.addresses(), vec!["aws_s3_bucket.logs"]);
        assert_eq!(
            report.drifted[0].attributes,
            vec![change(
                "tags",
                Some(r#"{"team":"a"}"#),
                Some(r#"{"team":"b"}"#)
            )]
        );
    }

    #[test]
    fn other_actions_are_joined() {
        assert_eq!(
            how(&["delete".into(), "create".into()]).as_deref(),
            Some("delete+create")
        );
        assert_eq!(how(&["create".into()]).as_deref(), Some("create"));
        assert_eq!(how(&["no-op".into()]), None);
        assert_eq!(how(&[]), None);
    }

    #[test]
    fn a_sensitive_mark_anywhere_in_an_attribute_masks_it() {
        let marks: Value = serde_json::from_str(
            r#"{"tags":{"owner":false,"token":true},"list":[false,[true]],"plain":false,"empty":{},"block":[{"x":false}]}"#,
        )
        .unwrap();
        assert!(sensitive(Some(&marks), "tags"));
        assert!(sensitive(Some(&marks), "list"));
        assert!(!sensitive(Some(&marks), "plain"));
        assert!(!sensitive(Some(&marks), "empty"));
        assert!(!sensitive(Some(&marks), "block"));
        assert!(!sensitive(Some(&marks), "absent"));
        assert!(sensitive(Some(&Value::Bool(true)), "anything"));
        assert!(!sensitive(Some(&Value::Bool(false)), "anything"));
        assert!(!sensitive(None, "anything"));

        let plan = br#"{"format_version":"1.2","planned_values":{},
          "resource_drift":[{"address":"a.b","change":{"actions":["update"],
            "before":{"tags":{"token":"t1"},"n":1},"after":{"tags":{"token":"t2"},"n":2},
            "before_sensitive":{"tags":{"token":true}},"after_sensitive":true}}]}"#;
        let report = Report::parse(plan).unwrap();
        assert_eq!(
            report.drifted[0].attributes,
            vec![
                change("n", Some(MASK), Some(MASK)),
                change("tags", Some(MASK), Some(MASK)),
            ]
        );
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let long = "v".repeat(1000);
        let before: Vec<String> = (0..80).map(|i| format!(r#""a{i:02}":"{long}""#)).collect();
        let after: Vec<String> = (0..80).map(|i| format!(r#""a{i:02}":"w""#)).collect();
        let entry = |i: usize| {
            format!(
                r#"{{"address":"t.r[{i}]","change":{{"actions":["update"],"before":{{{}}},"after":{{{}}}}}}}"#,
                before.join(","),
                after.join(",")
            )
        };
        let entries: Vec<String> = (0..DRIFTED_MAX + 20).rev().map(entry).collect();
        let plan = format!(
            r#"{{"format_version":"1.2","planned_values":{{}},"resource_drift":[{}]}}"#,
            entries.join(",")
        );
        let report = Report::parse(plan.as_bytes()).unwrap();
        assert_eq!(report.count, DRIFTED_MAX + 20);
        assert_eq!(report.drifted.len(), DRIFTED_MAX);
        assert!(report
            .drifted
            .windows(2)
            .all(|w| w[0].address <= w[1].address));
        // The first in the plan are kept: those numbered from the top down.
        let top = format!("t.r[{}]", DRIFTED_MAX + 19);
        assert!(report.addresses().contains(&top.as_str()));
        assert!(!report.addresses().contains(&"t.r[0]"));
        let attributes = &report.drifted[0].attributes;
        assert_eq!(attributes.len(), ATTRIBUTES_MAX);
        assert_eq!(attributes[0].name, "a00");
        let shown = attributes[0].before.as_deref().unwrap();
        assert!(shown.len() <= VALUE_MAX && shown.ends_with('…'), "{shown}");
    }

    #[test]
    fn refuses_what_is_not_a_saved_plans_json() {
        let refused = |bytes: &[u8]| match Report::parse(bytes) {
            Err(ReportError::NotAPlan(why)) => why,
            Ok(report) => panic!("read as a plan: {report:?}"),
        };
        assert!(refused(b"not json").starts_with("it could not be read"));
        assert!(refused(b"[1,2]").starts_with("it could not be read"));
        assert_eq!(
            refused(br#"{"format_version":"1.2","resource_drift":[]}"#),
            "it has no format_version and planned_values"
        );
        let state = br#"{"version":4,"terraform_version":"1.11.4","serial":3,"lineage":"8a0b","outputs":{},"resources":[],"check_results":null}"#;
        assert_eq!(refused(state), "it is a state file");
        let shown_state =
            br#"{"format_version":"1.0","terraform_version":"1.11.4","values":{"root_module":{}}}"#;
        assert!(refused(shown_state).contains("without a plan file"));
        let stream = b"{\"@level\":\"info\",\"@message\":\"Terraform 1.11.4\",\"@module\":\"terraform.ui\",\"type\":\"version\",\"terraform\":\"1.11.4\",\"ui\":\"1.2\"}\n{\"@level\":\"info\",\"@message\":\"Plan: 0 to add\",\"type\":\"change_summary\"}\n";
        assert!(refused(stream).contains("`terraform plan -json`"));

        let message = ReportError::NotAPlan("it is a state file".into()).to_string();
        assert!(message.starts_with("it is a state file, not the JSON of a saved plan"));
        assert!(message.contains(
            "terraform plan -refresh-only -out drift.tfplan && terraform show -json drift.tfplan > drift.json"
        ));
    }
}
