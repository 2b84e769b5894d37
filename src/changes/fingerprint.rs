//! The fingerprint of a plan's effect: what it would do to each resource (its actions, and its
//! values before and after where the plan knows them) and to each output, so that two plans of
//! the same code against the same state have the same fingerprint, whatever their timestamp,
//! key order or formatting, and a plan that does anything else has another. Pure.
//!
//! Every digest is keyed (HMAC-SHA-256 under a key the server keeps): a plan's values include
//! sensitive ones, and a plain hash of a short secret could be found by trying candidates.
//! What is kept of a plan is its addresses and these digests, never a value.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A plan's effect, digested: one digest per resource address and per output, and one over
/// them all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Over every resource and output digest, by address.
    pub digest: String,
    /// Each changing resource instance's address and the digest of what the plan does to it.
    pub resources: BTreeMap<String, String>,
    /// Each changing output's name and the digest of its change.
    pub outputs: BTreeMap<String, String>,
}

/// How one resource (or output) differs between two plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// Only the second plan changes it.
    Added(String),
    /// Only the first plan changes it.
    Removed(String),
    /// Both change it, differently.
    Changed(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Added(a) => write!(f, "{a} (only in the new plan)"),
            Difference::Removed(a) => write!(f, "{a} (only in the approved plan)"),
            Difference::Changed(a) => write!(f, "{a} (changed differently)"),
        }
    }
}

/// The fingerprint of the plan JSON `bytes` (`terraform show -json plan.tfplan`) under `key`.
/// Resources and outputs the plan leaves alone (`no-op`) and data sources it only reads are
/// not part of its effect.
pub fn fingerprint(bytes: &[u8], key: &[u8]) -> Result<Fingerprint, String> {
    #[derive(Deserialize)]
    struct Plan {
        #[serde(default)]
        resource_changes: Vec<ResourceChange>,
        #[serde(default)]
        output_changes: BTreeMap<String, Change>,
    }
    #[derive(Deserialize)]
    struct ResourceChange {
        address: String,
        #[serde(default)]
        previous_address: Value,
        /// Set for an object a `create_before_destroy` replacement left behind.
        #[serde(default)]
        deposed: Option<String>,
        change: Change,
    }
    #[derive(Deserialize)]
    struct Change {
        actions: Vec<String>,
        #[serde(default)]
        importing: Value,
        #[serde(default)]
        before: Value,
        #[serde(default)]
        after: Value,
        #[serde(default)]
        after_unknown: Value,
    }
    let plan: Plan = serde_json::from_slice(bytes).map_err(|e| {
        format!("it is not the JSON of a saved plan ({e}): run `terraform show -json plan.tfplan > plan.json`")
    })?;
    // A move or an import is an effect even when nothing else changes.
    let effect = |c: &Change, moved_from: &Value| -> Option<String> {
        let acts: Vec<&str> = c.actions.iter().map(String::as_str).collect();
        if matches!(acts.as_slice(), ["no-op"] | ["read"])
            && moved_from.is_null()
            && c.importing.is_null()
        {
            return None;
        }
        let mut text = String::new();
        canonical(
            &serde_json::json!({
                "actions": c.actions,
                "before": c.before,
                "after": c.after,
                "after_unknown": c.after_unknown,
                "previous_address": moved_from,
                "importing": c.importing,
            }),
            &mut text,
        );
        Some(keyed(key, text.as_bytes()))
    };
    let mut resources = BTreeMap::new();
    for rc in &plan.resource_changes {
        if let Some(digest) = effect(&rc.change, &rc.previous_address) {
            // A deposed object shares its address with the current one: each is its own entry.
            let name = match &rc.deposed {
                Some(key) => format!("{} (deposed {key})", rc.address),
                None => rc.address.clone(),
            };
            resources.insert(name, digest);
        }
    }
    let outputs: BTreeMap<String, String> = plan
        .output_changes
        .iter()
        .filter_map(|(name, c)| Some((name.clone(), effect(c, &Value::Null)?)))
        .collect();
    let mut all = String::new();
    for (kind, map) in [("resource", &resources), ("output", &outputs)] {
        for (name, digest) in map {
            all.push_str(&format!("{kind} {} {digest}\n", name.len()));
            all.push_str(name);
            all.push('\n');
        }
    }
    Ok(Fingerprint {
        digest: keyed(key, all.as_bytes()),
        resources,
        outputs,
    })
}

/// What differs between the effect of `approved` and of `presented`, resources by address
/// first, then outputs (named `output.NAME`); empty when they match.
pub fn differences(approved: &Fingerprint, presented: &Fingerprint) -> Vec<Difference> {
    let mut out = Vec::new();
    for (prefix, a, b) in [
        ("", &approved.resources, &presented.resources),
        ("output.", &approved.outputs, &presented.outputs),
    ] {
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for name in names {
            let named = format!("{prefix}{name}");
            match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(_), Some(_)) => out.push(Difference::Changed(named)),
                (Some(_), None) => out.push(Difference::Removed(named)),
                (None, _) => out.push(Difference::Added(named)),
            }
        }
    }
    out
}

fn keyed(key: &[u8], bytes: &[u8]) -> String {
    // HMAC takes a key of any length, so this cannot fail; an empty digest would never match.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(bytes);
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// `value` as JSON with every object's keys in order and no whitespace: one text per value.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test key";

    fn plan(timestamp: &str, after: &str, extra: &str) -> String {
        format!(
            r#"{{"format_version":"1.2","timestamp":"{timestamp}","planned_values":{{}},
              "resource_changes":[
                {{"address":"terraform_data.a","change":{{"actions":["create"],"before":null,
                  "after":{{"input":"{after}","triggers_replace":null}},"after_unknown":{{"id":true}}}}}},
                {{"address":"terraform_data.same","change":{{"actions":["no-op"],"before":{{}},"after":{{}}}}}}
                {extra}],
              "output_changes":{{"name":{{"actions":["create"],"before":null,"after":"{after}"}}}}}}"#
        )
    }

    #[test]
    fn the_same_effect_has_the_same_fingerprint_whatever_the_timestamp_order_or_spacing() {
        let a = fingerprint(plan("2026-12-01T10:00:00Z", "x", "").as_bytes(), KEY).unwrap();
        let b = fingerprint(plan("2026-12-03T08:00:00Z", "x", "").as_bytes(), KEY).unwrap();
        assert_eq!(a, b);
        let reordered = r#"{"output_changes":{"name":{"after":"x","before":null,"actions":["create"]}},
          "resource_changes":[{"change":{"after_unknown":{"id":true},
          "after":{"triggers_replace":null,"input":"x"},"before":null,"actions":["create"]},
          "address":"terraform_data.a"}]}"#;
        assert_eq!(fingerprint(reordered.as_bytes(), KEY).unwrap(), a);
        // The no-op is not part of the effect.
        assert_eq!(a.resources.keys().collect::<Vec<_>>(), ["terraform_data.a"]);
        assert!(differences(&a, &b).is_empty());
    }

    #[test]
    fn another_value_or_another_resource_is_another_fingerprint_and_is_named() {
        let a = fingerprint(plan("t", "x", "").as_bytes(), KEY).unwrap();
        let other = fingerprint(plan("t", "y", "").as_bytes(), KEY).unwrap();
        assert_ne!(a.digest, other.digest);
        assert_eq!(
            differences(&a, &other),
            vec![
                Difference::Changed("terraform_data.a".into()),
                Difference::Changed("output.name".into())
            ]
        );
        let extra = r#",{"address":"terraform_data.b","change":{"actions":["delete"],"before":{"input":"z"},"after":null}}"#;
        let more = fingerprint(plan("t", "x", extra).as_bytes(), KEY).unwrap();
        assert_eq!(
            differences(&a, &more),
            vec![Difference::Added("terraform_data.b".into())]
        );
        assert_eq!(
            differences(&more, &a),
            vec![Difference::Removed("terraform_data.b".into())]
        );
    }

    #[test]
    fn a_move_an_import_and_a_deposed_object_are_part_of_the_effect() {
        let with = |extra: &str| fingerprint(plan("t", "x", extra).as_bytes(), KEY).unwrap();
        let base = with("");
        let moved = with(
            r#",{"address":"terraform_data.new","previous_address":"terraform_data.old","change":{"actions":["no-op"],"before":{},"after":{}}}"#,
        );
        assert_eq!(
            differences(&base, &moved),
            vec![Difference::Added("terraform_data.new".into())]
        );
        let imported = with(
            r#",{"address":"terraform_data.i","change":{"actions":["no-op"],"importing":{"id":"x"},"before":{},"after":{}}}"#,
        );
        assert_eq!(
            differences(&base, &imported),
            vec![Difference::Added("terraform_data.i".into())]
        );
        let deposed = with(
            r#",{"address":"terraform_data.a","deposed":"00ab","change":{"actions":["delete"],"before":{"input":"old"},"after":null}}"#,
        );
        assert_eq!(
            differences(&base, &deposed),
            vec![Difference::Added("terraform_data.a (deposed 00ab)".into())]
        );
    }

    #[test]
    fn digests_are_keyed_and_reveal_no_value() {
        let secret = "hunter2";
        let text = plan("t", secret, "");
        let a = fingerprint(text.as_bytes(), KEY).unwrap();
        let shown = serde_json::to_string(&a).unwrap();
        assert!(!shown.contains(secret), "{shown}");
        // Under another key, the same plan has other digests: they cannot be recomputed
        // from a guess of the value without the server's key.
        let b = fingerprint(text.as_bytes(), b"another key").unwrap();
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.resources, b.resources);
    }

    #[test]
    fn what_is_not_a_plan_is_refused_with_what_to_run() {
        let e = fingerprint(b"not json", KEY).unwrap_err();
        assert!(e.contains("terraform show -json"), "{e}");
    }
}
