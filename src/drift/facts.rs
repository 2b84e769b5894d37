//! What a state says of itself beyond its attribute values: the terraform version that wrote
//! it, the providers its resources name, the instances an apply left tainted or deposed, and
//! the checks that failed. Read from a version's content once, when it is written, so that the
//! detectors compare two versions without reading either again. Pure.
//!
//! States can be 100 MB: the document is read as it is parsed, one resource at a time, and
//! attribute values are skipped where they lie, never built. A state is chosen by whoever
//! writes it, so every set is capped at 1,000 entries, the first ones read.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::history::{Digests, RawResource};

/// The most entries a set of [`Facts`] holds.
const CAP: usize = 1000;

/// What a state says of itself beyond attribute values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
    /// Provider addresses the state's resources name (the `provider` field of each resource,
    /// e.g. `provider["registry.terraform.io/hashicorp/aws"]` or
    /// `provider["registry.terraform.io/hashicorp/aws"].west`), deduplicated.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub providers: BTreeSet<String>,
    /// Instance addresses whose current object has `"status": "tainted"`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tainted: BTreeSet<String>,
    /// Instance addresses that carry a deposed object (an instance object with a `deposed`
    /// key).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deposed: BTreeSet<String>,
    /// Checkable objects whose check failed or errored in the last apply, from the state's
    /// `check_results`: each failing object's address, or the check's configuration address
    /// when the check failed and names no failing object.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub failed_checks: BTreeSet<String>,
}

impl Facts {
    /// The facts of a state's content; `None` when it is not a readable Terraform state (an
    /// OpenTofu-encrypted one, which has no `resources` array but an `encrypted_data` field, or
    /// anything not a JSON object with `resources`).
    pub fn of(content: &[u8]) -> Option<Facts> {
        Facts::read(content).map(|(facts, _)| facts)
    }

    /// The facts of a state's content and its [`crate::history::fingerprint`], from one
    /// reading of it (a write needs both, and a state can be large); `None` exactly when the
    /// fingerprint cannot be taken either.
    pub fn read(content: &[u8]) -> Option<(Facts, String)> {
        #[derive(Deserialize)]
        struct State<'a> {
            // Read leniently, like `check_results`: an odd one loses this fact, not the state.
            #[serde(borrow, default)]
            terraform_version: Option<&'a RawValue>,
            resources: FromResources,
            // Kept as text and read apart: a `check_results` this code does not understand
            // loses the failed checks, not the whole state.
            #[serde(borrow, default)]
            check_results: Option<&'a RawValue>,
        }
        let state: State = serde_json::from_slice(content).ok()?;
        let FromResources {
            providers,
            tainted,
            deposed,
            digests,
        } = state.resources;
        let facts = Facts {
            terraform_version: state
                .terraform_version
                .and_then(|v| serde_json::from_str(v.get()).ok()),
            providers,
            tainted,
            deposed,
            failed_checks: state.check_results.map(failed_checks).unwrap_or_default(),
        };
        Some((facts, digests.finish()?))
    }
}

/// Inserts `value` unless the set is full: the first [`CAP`] entries read are kept.
fn insert_capped(set: &mut BTreeSet<String>, value: String) {
    if set.len() < CAP {
        set.insert(value);
    }
}

/// What the `resources` array says, gathered one resource at a time as the array is parsed,
/// so that no more than one resource of a large state is in memory at once.
#[derive(Default)]
struct FromResources {
    providers: BTreeSet<String>,
    tainted: BTreeSet<String>,
    deposed: BTreeSet<String>,
    digests: Digests,
}

impl FromResources {
    fn add(&mut self, resource: &RawResource<'_>) {
        self.digests.add(resource);
        if !resource.provider.is_empty() && !self.providers.contains(&*resource.provider) {
            insert_capped(&mut self.providers, resource.provider.to_string());
        }
        for instance in &resource.instances {
            // A deposed object is the old object of a create-before-destroy replacement; its
            // status says nothing of the instance's current object.
            if instance.deposed.is_some() {
                insert_capped(&mut self.deposed, resource.address(instance));
            } else if instance.status.as_deref() == Some("tainted") {
                insert_capped(&mut self.tainted, resource.address(instance));
            }
        }
    }
}

impl<'de> Deserialize<'de> for FromResources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = FromResources;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of resources")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FromResources, A::Error> {
                let mut out = FromResources::default();
                while let Some(resource) = seq.next_element::<RawResource<'de>>()? {
                    out.add(&resource);
                }
                Ok(out)
            }
        }
        deserializer.deserialize_seq(Each)
    }
}

/// The failed checks of a state's `check_results` (`null`, or entries with `config_addr`,
/// `status` and `objects`); none when it cannot be read.
fn failed_checks(raw: &RawValue) -> BTreeSet<String> {
    #[derive(Deserialize)]
    struct Check<'a> {
        #[serde(borrow, default)]
        config_addr: Cow<'a, str>,
        #[serde(borrow, default)]
        status: Cow<'a, str>,
        #[serde(borrow, default)]
        objects: Option<Vec<Object<'a>>>,
    }
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow, default)]
        object_addr: Cow<'a, str>,
        #[serde(borrow, default)]
        status: Cow<'a, str>,
    }
    let failed = |status: &str| status == "fail" || status == "error";
    let checks: Vec<Check> = serde_json::from_str::<Option<Vec<Check>>>(raw.get())
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut out = BTreeSet::new();
    for check in &checks {
        let mut named = false;
        for object in check.objects.iter().flatten() {
            if failed(&object.status) && !object.object_addr.is_empty() {
                insert_capped(&mut out, object.object_addr.to_string());
                named = true;
            }
        }
        if !named && failed(&check.status) && !check.config_addr.is_empty() {
            insert_capped(&mut out, check.config_addr.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `terraform apply` 1.11.4 writes when the apply of a `terraform_data` failed after
    /// creating it.
    const TAINTED: &str = r#"{
  "version": 4,
  "terraform_version": "1.11.4",
  "serial": 3,
  "lineage": "8a0b7c54-2f7e-3c1d-9e4b-5f6a7b8c9d0e",
  "outputs": {},
  "resources": [
    {
      "mode": "managed",
      "type": "terraform_data",
      "name": "x",
      "provider": "provider[\"terraform.io/builtin/terraform\"]",
      "instances": [
        {
          "schema_version": 0,
          "attributes": {
            "id": "c8a3f1d2-6b1e-4f0a-9d7c-2e5b8a4f6c31",
            "input": {
              "value": "a",
              "type": "string"
            },
            "output": {
              "value": "a",
              "type": "string"
            },
            "triggers_replace": null
          },
          "sensitive_attributes": [],
          "status": "tainted"
        }
      ]
    }
  ],
  "check_results": null
}"#;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_a_terraform_1_11_state() {
        let facts = Facts::of(TAINTED.as_bytes()).unwrap();
        assert_eq!(facts.terraform_version.as_deref(), Some("1.11.4"));
        assert_eq!(
            facts.providers,
            set(&[r#"provider["terraform.io/builtin/terraform"]"#])
        );
        assert_eq!(facts.tainted, set(&["terraform_data.x"]));
        assert!(facts.deposed.is_empty() && facts.failed_checks.is_empty());

        let healthy = TAINTED.replace(r#""status": "tainted""#, r#""private": "bnVsbA==""#);
        assert!(Facts::of(healthy.as_bytes()).unwrap().tainted.is_empty());
    }

    #[test]
    fn addresses_are_spelled_as_history_spells_them() {
        let state = br#"{"version":4,"resources":[
          {"module":"module.net","mode":"managed","type":"aws_vpc","name":"main","provider":"provider[\"registry.terraform.io/hashicorp/aws\"].west",
           "instances":[{"status":"tainted","attributes":{}}]},
          {"mode":"data","type":"aws_ami","name":"ubuntu","provider":"provider[\"registry.terraform.io/hashicorp/aws\"]",
           "instances":[{"status":"tainted","attributes":{"id":"ami-1"}}]},
          {"mode":"managed","type":"terraform_data","name":"counted",
           "instances":[{"index_key":0,"status":"tainted"},{"index_key":12,"status":"tainted"}]},
          {"module":"module.app[\"eu\"]","mode":"managed","type":"terraform_data","name":"each",
           "instances":[{"index_key":"a b","status":"tainted"},{"index_key":"q\"uote","status":"tainted"}]}
        ]}"#;
        let facts = Facts::of(state).unwrap();
        let fingerprint = crate::history::fingerprint(state).unwrap();
        let history: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&fingerprint).unwrap();
        let history: BTreeSet<String> = history.into_keys().collect();
        assert_eq!(facts.tainted, history);
        assert!(facts.tainted.contains("data.aws_ami.ubuntu"));
        assert!(facts
            .tainted
            .contains(r#"module.app["eu"].terraform_data.each["a b"]"#));
        assert!(facts.tainted.contains("terraform_data.counted[12]"));
        assert_eq!(facts.providers.len(), 2, "{:?}", facts.providers);
    }

    #[test]
    fn one_reading_gives_the_facts_and_the_fingerprint_history_takes() {
        let state = br#"{"version":4,"terraform_version":7,"serial":1,"lineage":"L","resources":[
          {"mode":"managed","type":"terraform_data","name":"x","instances":[{"attributes":{"input":"a"},"status":"tainted"}]}
        ],"check_results":{"not":"a list"}}"#;
        let (facts, fingerprint) = Facts::read(state).unwrap();
        assert_eq!(Some(fingerprint), crate::history::fingerprint(state));
        // An odd terraform_version or check_results loses that fact, not the state.
        assert_eq!(facts.terraform_version, None);
        assert!(facts.failed_checks.is_empty());
        assert!(facts.tainted.contains("terraform_data.x"));
        let encrypted = br#"{"serial":1,"lineage":"L","encrypted_data":"eA=="}"#;
        assert_eq!(Facts::read(encrypted), None);
        assert_eq!(crate::history::fingerprint(encrypted), None);
    }

    #[test]
    fn deposed_objects_are_told_apart_from_tainted_ones() {
        let state = br#"{"resources":[{"mode":"managed","type":"aws_instance","name":"web",
          "instances":[
            {"index_key":0,"attributes":{"id":"i-new"}},
            {"index_key":0,"deposed":"00000001","status":"tainted","attributes":{"id":"i-old"}}]}]}"#;
        let facts = Facts::of(state).unwrap();
        assert_eq!(facts.deposed, set(&["aws_instance.web[0]"]));
        assert!(
            facts.tainted.is_empty(),
            "the current object is not tainted"
        );
    }

    #[test]
    fn failed_checks_name_the_failing_objects_or_the_check() {
        let state = br#"{"resources":[],"check_results":[
          {"object_kind":"resource","config_addr":"aws_instance.web","status":"fail",
           "objects":[{"object_addr":"aws_instance.web[0]","status":"pass"},
                      {"object_addr":"aws_instance.web[1]","status":"fail","failure_messages":["no"]}]},
          {"object_kind":"check","config_addr":"check.health","status":"error","objects":null},
          {"object_kind":"output_value","config_addr":"output.url","status":"pass",
           "objects":[{"object_addr":"output.url","status":"pass"}]},
          {"object_kind":"check","config_addr":"check.later","status":"unknown"}]}"#;
        let facts = Facts::of(state).unwrap();
        assert_eq!(
            facts.failed_checks,
            set(&["aws_instance.web[1]", "check.health"])
        );

        let odd = br#"{"resources":[],"check_results":{"not":"an array"}}"#;
        assert_eq!(
            Facts::of(odd),
            Some(Facts::default()),
            "still a readable state"
        );
    }

    #[test]
    fn what_is_not_a_readable_state_has_no_facts() {
        let encrypted =
            br#"{"serial":1,"lineage":"L","encrypted_data":"eA==","encryption_version":"v0"}"#;
        assert_eq!(Facts::of(encrypted), None);
        assert_eq!(crate::history::fingerprint(encrypted), None);
        assert_eq!(Facts::of(b"not json"), None);
        assert_eq!(Facts::of(b"[]"), None);
        assert_eq!(Facts::of(b"{}"), None);
        assert_eq!(Facts::of(br#"{"resources":{}}"#), None);
        assert_eq!(Facts::of(br#"{"resources":[]}"#), Some(Facts::default()));
    }

    #[test]
    fn every_set_keeps_only_the_first_entries_read() {
        let instances: Vec<String> = (0..CAP + 500)
            .map(|i| format!(r#"{{"index_key":{i},"status":"tainted"}}"#))
            .collect();
        let state = format!(
            r#"{{"resources":[{{"mode":"managed","type":"terraform_data","name":"x","instances":[{}]}}]}}"#,
            instances.join(",")
        );
        let facts = Facts::of(state.as_bytes()).unwrap();
        assert_eq!(facts.tainted.len(), CAP);
        assert!(facts.tainted.contains("terraform_data.x[0]"));
        assert!(facts
            .tainted
            .contains(&format!("terraform_data.x[{}]", CAP - 1)));
        assert!(!facts.tainted.contains(&format!("terraform_data.x[{CAP}]")));
    }

    #[test]
    fn empty_facts_serialize_as_an_empty_object() {
        assert_eq!(serde_json::to_string(&Facts::default()).unwrap(), "{}");
        let facts = Facts::of(TAINTED.as_bytes()).unwrap();
        let text = serde_json::to_string(&facts).unwrap();
        assert_eq!(serde_json::from_str::<Facts>(&text).unwrap(), facts);
        assert!(!text.contains("failed_checks"));
    }
}
