//! Who changed what: the history of a state, what changed between two versions resource by
//! resource (addresses added, removed and changed, which attributes, sensitive values masked),
//! and the status of environments. Pure: the types and the comparison, no storage.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::changes::BreakglassGrant;
use crate::state::VersionMeta;

/// One changed attribute; values are JSON text, or `(sensitive)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeChange {
    pub name: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub address: String,
    pub attributes: Vec<AttributeChange>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
    /// False when either side is not a readable Terraform state (an encrypted OpenTofu state).
    pub comparable: bool,
}

const MASK: &str = "(sensitive)";

struct Instance {
    attributes: serde_json::Map<String, serde_json::Value>,
    sensitive: Vec<String>,
}

/// A resource's address without an instance key: `module.net.aws_vpc.main`, `data.x.y`.
fn resource_address(module: &str, mode: &str, kind: &str, name: &str) -> String {
    let mut base = String::new();
    if !module.is_empty() {
        base.push_str(module);
        base.push('.');
    }
    if mode == "data" {
        base.push_str("data.");
    }
    base.push_str(&format!("{kind}.{name}"));
    base
}

/// An instance's address: its resource's, with `[0]` or `["key"]` when it has a key.
fn instance_address(base: &str, index_key: Option<&serde_json::Value>) -> String {
    match index_key {
        Some(serde_json::Value::Number(n)) => format!("{base}[{n}]"),
        Some(serde_json::Value::String(s)) => format!("{base}[\"{s}\"]"),
        _ => base.to_string(),
    }
}

/// A state's resource instances, each address with a digest of its attributes, as stored with
/// every version when it is written; `None` when the content is not a readable state (an
/// encrypted OpenTofu state). Reads the document without building it in memory: attribute
/// values are hashed where they lie in the input.
pub fn fingerprint(content: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct State<'a> {
        #[serde(borrow)]
        resources: Vec<RawResource<'a>>,
    }
    let state: State = serde_json::from_slice(content).ok()?;
    let mut digests = Digests::default();
    for r in &state.resources {
        digests.add(r);
    }
    digests.finish()
}

/// The digests of a state's resource instances, gathered a resource at a time, and the
/// fingerprint they make: what [`fingerprint`] does, for a reader that reads the resources
/// itself ([`crate::drift::Facts::read`]).
#[derive(Default)]
pub(crate) struct Digests(BTreeMap<String, String>);

impl Digests {
    pub fn add(&mut self, r: &RawResource<'_>) {
        for i in &r.instances {
            let attributes = i.attributes.map_or("", |a| a.get());
            let digest = sha2::Sha256::digest(attributes.as_bytes());
            self.0.insert(r.address(i), hex::encode(&digest[..8]));
        }
    }

    pub fn finish(self) -> Option<String> {
        serde_json::to_string(&self.0).ok()
    }
}

/// A resource of a state as its JSON has it, borrowed from the input rather than built: what
/// the fingerprint and [`crate::drift::Facts`] read. Every other field is skipped as it is
/// parsed.
#[derive(Deserialize)]
pub(crate) struct RawResource<'a> {
    #[serde(borrow, default)]
    pub module: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub mode: std::borrow::Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    pub kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub name: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub provider: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub instances: Vec<RawInstance<'a>>,
}

/// One instance object of a [`RawResource`].
#[derive(Deserialize)]
pub(crate) struct RawInstance<'a> {
    #[serde(default)]
    pub index_key: Option<serde_json::Value>,
    /// Left as text where it lies in the input.
    #[serde(borrow, default)]
    pub attributes: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    pub status: Option<std::borrow::Cow<'a, str>>,
    /// Present on the old object of a create-before-destroy replacement not yet destroyed.
    #[serde(default)]
    pub deposed: Option<serde::de::IgnoredAny>,
}

impl RawResource<'_> {
    /// The address of its instance `i`: `module.net.aws_vpc.main`, `data.x.y`, `a.b[0]`,
    /// `a.b["key"]`.
    pub fn address(&self, i: &RawInstance<'_>) -> String {
        let base = resource_address(&self.module, &self.mode, &self.kind, &self.name);
        instance_address(&base, i.index_key.as_ref())
    }
}

fn digests(text: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(text).ok()
}

/// The addresses of the instances added, changed and removed between two fingerprints, each
/// list sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compared {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Compared {
    /// Every address touched, sorted.
    pub fn touched(&self) -> Vec<&str> {
        let mut all: Vec<&str> = [&self.added, &self.changed, &self.removed]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// What changed between two fingerprints, each read once; `None` when either cannot be read.
pub fn compare(before: &str, after: &str) -> Option<Compared> {
    let (before, after) = (digests(before)?, digests(after)?);
    let mut out = Compared::default();
    for (address, digest) in &after {
        match before.get(address) {
            None => out.added.push(address.clone()),
            Some(old) if old != digest => out.changed.push(address.clone()),
            Some(_) => {}
        }
    }
    out.removed = before
        .into_keys()
        .filter(|address| !after.contains_key(address))
        .collect();
    Some(out)
}

/// How many instances were added, changed and removed between two fingerprints.
pub fn count_changes(before: &str, after: &str) -> Option<(usize, usize, usize)> {
    let (before, after) = (digests(before)?, digests(after)?);
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|old| old != *v))
        .count();
    Some((added, changed, removed))
}

/// The addresses of the instances added, changed or removed between two fingerprints
/// (`before`: `None` when there was no state); `None` when either cannot be read.
pub fn touched(before: Option<&str>, after: &str) -> Option<Vec<String>> {
    let before = match before {
        Some(text) => digests(text)?,
        None => BTreeMap::new(),
    };
    let after = digests(after)?;
    let mut out: Vec<String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .collect();
    out.sort();
    Some(out)
}

/// Resource instances of a state by address; `None` when the content is not a readable state.
fn instances(content: Option<&[u8]>) -> Option<BTreeMap<String, Instance>> {
    let Some(content) = content else {
        return Some(BTreeMap::new()); // no state (or a deletion): nothing
    };
    let state: serde_json::Value = serde_json::from_slice(content).ok()?;
    let resources = state.get("resources")?.as_array()?;
    let mut out = BTreeMap::new();
    for r in resources {
        let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let base = resource_address(text("module"), text("mode"), text("type"), text("name"));
        for i in r
            .get("instances")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let address = instance_address(&base, i.get("index_key"));
            let attributes = i
                .get("attributes")
                .and_then(|a| a.as_object())
                .cloned()
                .unwrap_or_default();
            // Paths such as [{"type":"get_attr","value":"password"}]: the first step names the
            // top-level attribute to mask.
            let sensitive = i
                .get("sensitive_attributes")
                .and_then(|s| s.as_array())
                .into_iter()
                .flatten()
                .filter_map(|path| {
                    path.as_array()?
                        .first()?
                        .get("value")?
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            out.insert(
                address,
                Instance {
                    attributes,
                    sensitive,
                },
            );
        }
    }
    Some(out)
}

/// Compares two state contents (`None`: no state).
pub fn diff(before: Option<&[u8]>, after: Option<&[u8]>) -> Diff {
    let (Some(a), Some(b)) = (instances(before), instances(after)) else {
        return Diff::default();
    };
    let mut d = Diff {
        comparable: true,
        ..Diff::default()
    };
    for (address, new) in &b {
        let Some(old) = a.get(address) else {
            d.added.push(address.clone());
            continue;
        };
        let mut names: Vec<&String> = old.attributes.keys().chain(new.attributes.keys()).collect();
        names.sort();
        names.dedup();
        let mut attributes = Vec::new();
        for name in names {
            let (x, y) = (old.attributes.get(name), new.attributes.get(name));
            if x == y {
                continue;
            }
            let masked = old.sensitive.contains(name) || new.sensitive.contains(name);
            let show = |v: Option<&serde_json::Value>| {
                v.map(|v| {
                    if masked {
                        MASK.to_string()
                    } else {
                        v.to_string()
                    }
                })
            };
            attributes.push(AttributeChange {
                name: name.clone(),
                before: show(x),
                after: show(y),
            });
        }
        if !attributes.is_empty() {
            d.changed.push(Changed {
                address: address.clone(),
                attributes,
            });
        }
    }
    d.removed = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    d
}

/// One version in a history listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub meta: VersionMeta,
    /// `<env>-<n>`, when written under a change request.
    pub change: Option<String>,
    /// Resource instances added, changed and removed against the version before.
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// A state in the status listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateStatus {
    pub name: String,
    pub version: i64,
    pub serial: Option<i64>,
    pub principal: String,
    pub updated_at: String,
    pub deleted: bool,
    /// Who holds its lock, since when, for which operation.
    pub lock: Option<LockStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockStatus {
    pub id: String,
    /// The principal that took it, as authenticated.
    pub principal: String,
    /// The branch its credentials proved (a verified OIDC token), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Who the client says it is (LockInfo's `Who`, e.g. `dev@laptop`): a claim, not proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
    pub operation: String,
    pub since: String,
    /// When the holder last took, renewed or wrote under the lock.
    #[serde(default)]
    pub active_at: Option<String>,
    /// Whether it has been idle longer than the environment's `lock_lease`: another writer
    /// may take it over.
    #[serde(default)]
    pub lease_ran_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    pub environment: String,
    pub owner: String,
    pub protected: bool,
    /// The environment's `lock_lease` in seconds, if it sets one.
    #[serde(default)]
    pub lock_lease_seconds: Option<u64>,
    /// The networks its states are changed from (`write_from`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_from: Vec<String>,
    /// The networks it answers (`read_from`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_from: Vec<String>,
    pub states: Vec<StateStatus>,
    pub pending_changes: Vec<String>,
    pub approved_changes: Vec<String>,
    /// Changes whose writes went beyond their approved plan, newest first.
    #[serde(default)]
    pub diverged_changes: Vec<String>,
    pub breakglass: Vec<BreakglassGrant>,
    /// Why the environment is not served (its database could not be opened), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(resources: &str) -> Vec<u8> {
        format!(r#"{{"version":4,"serial":1,"lineage":"L","resources":[{resources}]}}"#)
            .into_bytes()
    }

    const DB: &str = r#"{"mode":"managed","type":"aws_db_instance","name":"main","instances":[{"attributes":{"size":"small","password":"hunter2"},"sensitive_attributes":[[{"type":"get_attr","value":"password"}]]}]}"#;

    #[test]
    fn resources_added_removed_and_changed_with_secrets_masked() {
        let a = state(&format!(
            r#"{DB},{{"mode":"managed","type":"terraform_data","name":"x","instances":[{{"index_key":0,"attributes":{{}}}}]}}"#
        ));
        let b = state(
            &DB.replace("small", "large")
                .replace("hunter2", "swordfish")
                .replace(r#""name":"main""#, r#""name":"main","module":"module.db""#),
        );
        let d = diff(Some(&a), Some(&b));
        assert!(d.comparable);
        assert_eq!(d.added, vec!["module.db.aws_db_instance.main"]);
        assert_eq!(
            d.removed,
            vec!["aws_db_instance.main", "terraform_data.x[0]"]
        );

        let b = state(&DB.replace("small", "large").replace("hunter2", "swordfish"));
        let d = diff(Some(&state(DB)), Some(&b));
        assert_eq!(d.changed.len(), 1);
        let attrs = &d.changed[0].attributes;
        assert_eq!(
            attrs[0],
            AttributeChange {
                name: "password".into(),
                before: Some(MASK.into()),
                after: Some(MASK.into())
            }
        );
        assert_eq!(
            attrs[1],
            AttributeChange {
                name: "size".into(),
                before: Some("\"small\"".into()),
                after: Some("\"large\"".into())
            }
        );
        let text = serde_json::to_string(&d).unwrap();
        assert!(!text.contains("hunter2") && !text.contains("swordfish"));
    }

    #[test]
    fn encrypted_states_are_not_comparable() {
        let enc = br#"{"serial":1,"lineage":"L","encrypted_data":"eA=="}"#;
        assert!(!diff(Some(enc), Some(&state(DB))).comparable);
        assert_eq!(
            diff(None, Some(&state(DB))).added,
            vec!["aws_db_instance.main"]
        );
    }

    #[test]
    fn fingerprints_count_what_diff_finds() {
        let x = r#"{"mode":"managed","type":"terraform_data","name":"x","instances":[{"index_key":"k","attributes":{}}]}"#;
        let a = state(&format!("{DB},{x}"));
        let b = state(&DB.replace("small", "large"));
        let (fa, fb) = (fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        assert!(fa.contains(r#""terraform_data.x[\"k\"]""#), "{fa}");
        assert!(!fa.contains("hunter2"), "a fingerprint holds digests only");
        assert_eq!(count_changes(&fa, &fb), Some((0, 1, 1)));
        assert_eq!(count_changes("{}", &fa), Some((2, 0, 0)));
        let compared = compare(&fa, &fb).unwrap();
        assert_eq!(compared.changed, vec!["aws_db_instance.main"]);
        assert_eq!(compared.removed, vec!["terraform_data.x[\"k\"]"]);
        assert!(compared.added.is_empty());
        assert_eq!(
            compared.touched(),
            vec!["aws_db_instance.main", "terraform_data.x[\"k\"]"]
        );
        assert!(compare(&fa, &fa).unwrap().is_empty());
        assert_eq!(compare("not json", &fa), None);
        let d = diff(Some(&a), Some(&b));
        assert_eq!((d.added.len(), d.changed.len(), d.removed.len()), (0, 1, 1));
        let enc = br#"{"serial":1,"lineage":"L","encrypted_data":"eA=="}"#;
        assert_eq!(fingerprint(enc), None);
    }
}
