//! State addresses and documents, and the rules a write must pass.
//!
//! Pure: nothing here touches storage. A state name is checked once at the edge
//! ([`StateName::parse`]); a document is parsed once ([`Document::parse`]) and then checked
//! against the current version ([`check_write`]). Every refusal says what was wrong.

use sha2::{Digest, Sha256};

/// What is known of a stored version, without its content.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VersionMeta {
    pub state: String,
    pub version: i64,
    pub sha256: String,
    pub serial: Option<i64>,
    pub lineage: Option<String>,
    pub size: i64,
    pub principal: String,
    pub operation: Option<String>,
    pub lock_id: Option<String>,
    pub forced: bool,
    pub deleted: bool,
    pub created_at: String,
    /// The change request it was written under, in a protected environment.
    pub change_number: Option<i64>,
    /// Its resource instances, taken when it was written ([`crate::history::fingerprint`]);
    /// `None` for versions written before they were taken, and contents that are not states.
    #[serde(skip)]
    pub resources: Option<String>,
    /// The resource addresses it wrote beyond the plan of the change it was written under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beyond_plan: Vec<String>,
}

/// A state's name within its environment: `network`, `app/api`. Segments are non-empty,
/// never `.` or `..`, and use `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateName(String);

impl StateName {
    pub fn parse(raw: &str) -> Result<StateName, String> {
        if raw.is_empty() {
            return Err("the state name is empty: use /v1/state/ENVIRONMENT/NAME".into());
        }
        if raw.len() > 512 {
            return Err("the state name is longer than 512 characters".into());
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return Err(format!(
                    "state name `{raw}` has an empty segment (`//` or a trailing `/`)"
                ));
            }
            if segment == "." || segment == ".." {
                return Err(format!("state name `{raw}` has a `{segment}` segment"));
            }
            if let Some(c) = segment
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(format!(
                    "state name `{raw}` contains `{c}`: use letters, digits, `.`, `_`, `-` and `/` between segments"
                ));
            }
        }
        Ok(StateName(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The facts bulkhead needs of a state document. Plain Terraform states and OpenTofu's
/// client-side encrypted states both carry `serial` and `lineage` in clear; the rest is stored
/// byte for byte and never interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub serial: i64,
    pub lineage: String,
    pub sha256: String,
}

impl Document {
    pub fn parse(bytes: &[u8]) -> Result<Document, Refusal> {
        #[derive(serde::Deserialize)]
        struct Clear {
            serial: Option<serde_json::Value>,
            lineage: Option<serde_json::Value>,
        }
        let clear: Clear = serde_json::from_slice(bytes)
            .map_err(|e| Refusal::Invalid(format!("the state is not a JSON object: {e}")))?;
        let serial = match clear.serial {
            Some(serde_json::Value::Number(n)) => {
                n.as_i64().filter(|s| (0..=MAX_SERIAL).contains(s))
            }
            _ => None,
        }
        .ok_or_else(|| {
            Refusal::Invalid(format!(
                "the state has no valid `serial` (a whole number from 0 to {MAX_SERIAL})"
            ))
        })?;
        let lineage = match clear.lineage {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            _ => return Err(Refusal::Invalid("the state has no `lineage` string".into())),
        };
        Ok(Document {
            serial,
            lineage,
            sha256: sha256_hex(bytes),
        })
    }
}

/// The highest serial a state may carry: 2^53, past which JSON readers lose its precision.
/// Terraform raises the serial by one a write, so no real state comes near it; one that does
/// leaves no room for the versions (and rollbacks) that must follow it.
pub const MAX_SERIAL: i64 = 1 << 53;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why a write is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(String),
    #[error("the state is {size} bytes, over this environment's limit of {limit} bytes (max_state_size)")]
    TooLarge { size: usize, limit: u64 },
    #[error("lineage {sent} differs from the stored state's lineage {current}: this is a different state (another environment's?) and was not written")]
    Lineage { current: String, sent: String },
    #[error("serial {sent} is older than the stored serial {current}: pull the current state (`terraform state pull`) and try again")]
    SerialBackwards { current: i64, sent: i64 },
    #[error("serial {serial} is already stored with different content: a state change must raise the serial")]
    SerialReused { serial: i64 },
}

impl Refusal {
    /// Whether a principal with `state:force-write` may push past this refusal.
    pub fn forceable(&self) -> bool {
        matches!(
            self,
            Refusal::Lineage { .. }
                | Refusal::SerialBackwards { .. }
                | Refusal::SerialReused { .. }
        )
    }
}

/// What a write that passes the checks does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Store a new version.
    Append,
    /// The very bytes are already the current version (a retried POST): store nothing.
    Unchanged,
}

/// Checks a document against the current version (`None`, or a deletion: any lineage starts a
/// state).
pub fn check_write(current: Option<&VersionMeta>, doc: &Document) -> Result<Write, Refusal> {
    let Some(current) = current.filter(|c| !c.deleted) else {
        return Ok(Write::Append);
    };
    if current.sha256 == doc.sha256 {
        return Ok(Write::Unchanged);
    }
    if let Some(lineage) = &current.lineage {
        if *lineage != doc.lineage {
            return Err(Refusal::Lineage {
                current: lineage.clone(),
                sent: doc.lineage.clone(),
            });
        }
    }
    if let Some(serial) = current.serial {
        if doc.serial < serial {
            return Err(Refusal::SerialBackwards {
                current: serial,
                sent: doc.serial,
            });
        }
        if doc.serial == serial {
            return Err(Refusal::SerialReused { serial });
        }
    }
    Ok(Write::Append)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(serial: i64, lineage: &str, body: &[u8]) -> VersionMeta {
        VersionMeta {
            state: "s".into(),
            version: 1,
            sha256: sha256_hex(body),
            serial: Some(serial),
            lineage: Some(lineage.into()),
            size: body.len() as i64,
            principal: "user:a".into(),
            operation: None,
            lock_id: None,
            forced: false,
            deleted: false,
            created_at: String::new(),
            change_number: None,
            resources: None,
            beyond_plan: Vec::new(),
        }
    }

    #[test]
    fn names() {
        assert!(StateName::parse("app/api").is_ok());
        for bad in ["", "a//b", "a/", "../x", "a/./b", "a b", "x%2f"] {
            assert!(StateName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents() {
        let d = Document::parse(br#"{"serial":3,"lineage":"L","resources":[]}"#).unwrap();
        assert_eq!((d.serial, d.lineage.as_str()), (3, "L"));
        // OpenTofu's encrypted form carries the same clear fields.
        let enc = br#"{"serial":1,"lineage":"L","meta":{},"encrypted_data":"abc","encryption_version":"v0"}"#;
        assert!(Document::parse(enc).is_ok());
        assert!(matches!(
            Document::parse(b"not json"),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            Document::parse(br#"{"lineage":"L"}"#),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn write_rules() {
        let body = br#"{"serial":5,"lineage":"L"}"#;
        let cur = meta(5, "L", body);
        let doc = |s: &str| Document::parse(s.as_bytes()).unwrap();
        assert_eq!(
            check_write(None, &doc(r#"{"serial":0,"lineage":"X"}"#)),
            Ok(Write::Append)
        );
        assert_eq!(
            check_write(Some(&cur), &Document::parse(body).unwrap()),
            Ok(Write::Unchanged)
        );
        assert_eq!(
            check_write(Some(&cur), &doc(r#"{"serial":6,"lineage":"L"}"#)),
            Ok(Write::Append)
        );
        assert!(matches!(
            check_write(Some(&cur), &doc(r#"{"serial":6,"lineage":"X"}"#)),
            Err(Refusal::Lineage { .. })
        ));
        assert!(matches!(
            check_write(Some(&cur), &doc(r#"{"serial":4,"lineage":"L"}"#)),
            Err(Refusal::SerialBackwards { .. })
        ));
        assert!(matches!(
            check_write(Some(&cur), &doc(r#"{"serial":5,"lineage":"L","x":1}"#)),
            Err(Refusal::SerialReused { .. })
        ));
        let mut deleted = cur.clone();
        deleted.deleted = true;
        assert_eq!(
            check_write(Some(&deleted), &doc(r#"{"serial":0,"lineage":"X"}"#)),
            Ok(Write::Append)
        );
    }
}
