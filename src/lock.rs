//! State locks as terraform's `http` backend speaks them.
//!
//! LOCK carries a JSON LockInfo; only 200 grants it; a 409/423 body is read by the client as
//! the holder's LockInfo and must carry a non-empty `ID`. Terraform 1.11 prints nothing of a
//! refused lock but `ID=<that ID>`, so the ID of every refusal is the sentence a person needs:
//! who holds the lock, or why the lock was refused. An UNLOCK with an empty body (terraform's
//! force-unlock) or with only an ID (OpenTofu's) is a force-unlock. Pure: no storage here.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The lock a state is held under, and the identity that took it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeldLock {
    pub lock_id: String,
    pub principal: String,
    /// The branch the holder's credentials proved (a verified OIDC token), if any.
    pub branch: Option<String>,
    /// The OIDC subject of the holder's credentials, if any.
    pub subject: Option<String>,
    pub operation: String,
    /// The client's LockInfo, as it sent it.
    pub info: String,
    pub created_at: String,
    /// The change request the lock was taken for (protected environments).
    pub change_number: Option<i64>,
    /// When the holder last took, renewed or wrote under the lock (RFC 3339).
    pub active_at: Option<String>,
}

impl HeldLock {
    /// Whether `caller` is the very identity that took this lock: the same principal, and the
    /// same branch and OIDC subject proved. A lock ID is no secret (readers see it), so it
    /// never carries authority of its own.
    pub fn taken_by(&self, caller: &crate::principal::Caller) -> bool {
        caller.is(
            &self.principal,
            self.branch.as_deref(),
            self.subject.as_deref(),
        )
    }

    /// When the holder last wrote or renewed, as stored: the time the lock was taken for a
    /// lock from before activity was kept.
    pub fn last_active(&self) -> &str {
        self.active_at.as_deref().unwrap_or(&self.created_at)
    }

    /// When the holder last showed it is alive: its last write or renewal, or else when it
    /// took the lock. `None` when no stored time can be read.
    pub fn active_since(&self) -> Option<DateTime<Utc>> {
        crate::time::Timestamp::parse(self.last_active())
            .ok()
            .map(|t| t.as_datetime())
    }

    /// Whether the lock has been idle longer than `lease` at `now`: it may then be taken over.
    /// Never without a lease, nor when the time of its last activity cannot be read (a lock
    /// whose age is unknown is left to a person's force-unlock rather than taken from a
    /// holder that may be writing).
    pub fn lease_ran_out(&self, lease: Option<std::time::Duration>, now: DateTime<Utc>) -> bool {
        let (Some(lease), Some(since)) = (lease, self.active_since()) else {
            return false;
        };
        match chrono::Duration::from_std(lease) {
            Ok(lease) => now.signed_duration_since(since) > lease,
            Err(_) => false,
        }
    }

    /// The holder as a person reads it.
    pub fn holder(&self) -> String {
        crate::principal::describe(&self.principal, self.branch.as_deref())
    }
}

/// Terraform's `statemgr.LockInfo`, field for field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Operation", default)]
    pub operation: String,
    #[serde(rename = "Info", default)]
    pub info: String,
    #[serde(rename = "Who", default)]
    pub who: String,
    #[serde(rename = "Version", default)]
    pub version: String,
    /// RFC 3339; omitted rather than empty, since Go cannot parse an empty time.
    #[serde(rename = "Created", default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(rename = "Path", default)]
    pub path: String,
}

/// Whether the client that sent a LOCK whose LockInfo says `Version = client_version` ends its
/// `-lock-timeout` retries at a 423 whose ID is empty, showing the rest of the LockInfo:
/// terraform from 1.15 does (and OpenTofu from 1.9), while earlier terraform shows nothing of
/// a 423 but its ID and retries any 423 until the timeout. The version is all a LOCK tells of
/// its client (terraform's http backend sends Go's default User-Agent), and OpenTofu's
/// releases share terraform's numbers: so only 1.15 and later get the empty ID, which no
/// client of those releases hides the sentence behind; OpenTofu 1.9 to 1.14 gets the form
/// earlier terraform needs, which it also shows.
pub fn stops_at_an_empty_id(client_version: &str) -> bool {
    let mut numbers = client_version
        .trim()
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (numbers.next(), numbers.next()) {
        (Some(Some(major)), Some(Some(minor))) => (major, minor) >= (1, 15),
        _ => false,
    }
}

/// The operation terraform names when a lock is only for planning.
pub const PLAN: &str = "OperationTypePlan";

/// The longest lock ID (or operation) a LOCK may name, in bytes. Terraform's IDs are UUIDs
/// (36 bytes); a longer ID is refused, so that no lock, and no record of one, carries more.
pub const ID_LIMIT: usize = 1024;

/// How long a reader's plan lock is remembered: a plan whose client died never sends its
/// UNLOCK, and one older than this is forgotten when the next is taken.
pub const READ_LOCK_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl LockInfo {
    /// Parses a LOCK body. The fields that only describe the client (`Who`, `Info`, `Path`,
    /// `Version`) are kept to [`crate::audit::TEXT_CAP`] bytes each, with a marker, so the
    /// LockInfo stored with a lock is bounded; an ID or operation over [`ID_LIMIT`] is refused.
    pub fn parse_lock(body: &[u8]) -> Result<LockInfo, String> {
        let mut info: LockInfo = serde_json::from_slice(body)
            .map_err(|e| format!("the LOCK body is not a terraform LockInfo JSON object: {e}"))?;
        if info.id.trim().is_empty() {
            return Err("the LockInfo has no ID".into());
        }
        for (what, text) in [("ID", &info.id), ("Operation", &info.operation)] {
            if text.len() > ID_LIMIT {
                return Err(format!(
                    "the LockInfo's {what} is {} bytes: bulkhead takes at most {ID_LIMIT} (terraform's lock IDs are UUIDs); nothing was locked",
                    text.len()
                ));
            }
        }
        for text in [
            &mut info.who,
            &mut info.info,
            &mut info.path,
            &mut info.version,
        ] {
            if text.len() > crate::audit::TEXT_CAP {
                *text = crate::audit::cap(text, crate::audit::TEXT_CAP).into_owned();
            }
        }
        Ok(info)
    }

    /// The 423 body for a lock that policy refuses, for the client of `client_version`: the
    /// sentence in `Info` and an empty ID, which ends its retries at once, where the client
    /// [stops there](stops_at_an_empty_id); otherwise the sentence is the ID too, since that
    /// is all the client shows.
    pub fn refusal_for(mut self, client_version: &str) -> LockInfo {
        if stops_at_an_empty_id(client_version) {
            self.id.clear();
        }
        self
    }

    /// The 423 body for a lock that policy refuses: the sentence is the ID, since that is
    /// what every client shows, and the `Info`.
    pub fn refusal(sentence: &str, operation: &str) -> LockInfo {
        LockInfo {
            id: sentence.to_string(),
            operation: operation.to_string(),
            info: sentence.to_string(),
            who: "bulkhead".into(),
            version: String::new(),
            created: Some(crate::time::Clock::system().now().stored()),
            path: String::new(),
        }
    }

    /// The 423 body naming the holder of `held` as bulkhead authenticated it.
    pub fn holder(held: &HeldLock) -> LockInfo {
        let claimed: LockInfo = serde_json::from_str(&held.info).unwrap_or_default();
        let who = if claimed.who.is_empty() {
            held.principal.clone()
        } else {
            format!("{} (client said: {})", held.principal, claimed.who)
        };
        LockInfo {
            id: format!(
                "{} held by {} ({} since {})",
                held.lock_id, held.principal, held.operation, held.created_at
            ),
            who,
            created: Some(held.created_at.clone()),
            ..claimed
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What an UNLOCK asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlock {
    /// Release the caller's own lock (the LockInfo it locked with).
    Own(LockInfo),
    /// Release whatever lock is held, optionally only if it has this ID.
    Force(Option<String>),
}

impl Unlock {
    pub fn parse(body: &[u8]) -> Result<Unlock, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Unlock::Force(None));
        }
        let info: LockInfo = serde_json::from_slice(body)
            .map_err(|e| format!("the UNLOCK body is not a terraform LockInfo JSON object: {e}"))?;
        let only_id = info.operation.is_empty() && info.who.is_empty() && info.created.is_none();
        Ok(match (only_id, info.id.is_empty()) {
            (_, true) => Unlock::Force(None),
            (true, false) => Unlock::Force(Some(info.id)),
            (false, false) => Unlock::Own(info),
        })
    }
}

/// Whether an ID a client sent back names `held`: the bare ID, or the whole ID of its 423
/// body.
pub fn names(held: &HeldLock, id: &str) -> bool {
    id == held.lock_id || id == LockInfo::holder(held).id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_ends_the_retries_of_the_clients_that_stop_at_an_empty_id_and_names_itself_to_the_rest(
    ) {
        let refused = |version: &str| {
            LockInfo::refusal("user:alice may not write prod", "OperationTypeApply")
                .refusal_for(version)
        };
        for version in ["1.15.5", "1.15.0-beta1", "1.16.0", "2.0.0", "v1.15.1"] {
            let info = refused(version);
            assert_eq!(info.id, "", "{version}");
            assert_eq!(info.info, "user:alice may not write prod", "{version}");
        }
        for version in ["1.14.9", "1.11.4", "1.9.0", "1.10.3", "", "x", "1", "1.x"] {
            let info = refused(version);
            assert_eq!(info.id, "user:alice may not write prod", "{version:?}");
            assert_eq!(info.info, "user:alice may not write prod", "{version:?}");
        }
    }

    fn held() -> HeldLock {
        HeldLock {
            lock_id: "abc".into(),
            principal: "user:alice".into(),
            branch: None,
            subject: None,
            operation: "OperationTypeApply".into(),
            info: r#"{"ID":"abc","Operation":"OperationTypeApply","Who":"root@laptop","Version":"1.11.4","Created":"2026-01-01T00:00:00Z","Path":"","Info":""}"#.into(),
            created_at: "2026-01-01T00:00:01Z".into(),
            change_number: None,
            active_at: None,
        }
    }

    #[test]
    fn a_lease_runs_out_only_after_it_is_over() {
        let now = Utc::now();
        let mut h = held();
        let lease = Some(std::time::Duration::from_secs(300));
        h.active_at = Some((now - chrono::Duration::seconds(299)).to_rfc3339());
        assert!(!h.lease_ran_out(lease, now));
        h.active_at = Some((now - chrono::Duration::seconds(301)).to_rfc3339());
        assert!(h.lease_ran_out(lease, now));
        assert!(!h.lease_ran_out(None, now));
        h.active_at = Some("yesterday".into());
        assert!(!h.lease_ran_out(lease, now));
        // A lock from before activity was recorded counts from when it was taken.
        h.active_at = None;
        assert!(h.lease_ran_out(lease, now));
    }

    #[test]
    fn holder_names_the_authenticated_principal() {
        let h = LockInfo::holder(&held());
        assert!(h.id.starts_with("abc held by user:alice"));
        assert_eq!(h.who, "user:alice (client said: root@laptop)");
        assert!(names(&held(), &h.id) && names(&held(), "abc") && !names(&held(), "abcd"));
        assert!(!names(&held(), "abc xyz"));
    }

    #[test]
    fn unlock_forms() {
        assert_eq!(Unlock::parse(b"").unwrap(), Unlock::Force(None));
        assert_eq!(
            Unlock::parse(br#"{"ID":"x"}"#).unwrap(),
            Unlock::Force(Some("x".into()))
        );
        let own = Unlock::parse(held().info.as_bytes()).unwrap();
        assert!(matches!(own, Unlock::Own(i) if i.id == "abc"));
        assert!(Unlock::parse(b"{").is_err());
        assert!(LockInfo::parse_lock(br#"{"ID":""}"#).is_err());
    }

    #[test]
    fn lock_bodies_are_bounded() {
        let long = "x".repeat(64 * 1024);
        let e = LockInfo::parse_lock(lock_body(&long, "w").as_bytes()).unwrap_err();
        assert!(
            e.contains("the LockInfo's ID is 65536 bytes: bulkhead takes at most 1024"),
            "{e}"
        );
        let info = LockInfo::parse_lock(lock_body("abc", &long).as_bytes()).unwrap();
        assert!(info.who.len() < 1100, "{}", info.who.len());
        assert!(
            info.who.ends_with("…(truncated, 65536 bytes)"),
            "{}",
            &info.who[1000..]
        );
        assert!(info.to_json().len() < 2048);
    }

    fn lock_body(id: &str, who: &str) -> String {
        serde_json::json!({"ID": id, "Operation": "OperationTypeApply", "Who": who}).to_string()
    }
}
