//! What a receiver is sent: the event as JSON of a stable schema (version [`SCHEMA`]), or as a
//! Slack incoming-webhook message, and the signature over the exact bytes sent.
//!
//! The signature is `sha256=` and the hex HMAC-SHA256, under the block's secret, of the
//! timestamp header's value, a `.`, and the body: a receiver that checks it and refuses
//! timestamps more than a few minutes old cannot be fed a forged body, nor an old one again.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use super::{Event, NotifyEvent, NotifyFormat};

/// The version of the JSON body's schema: fields are only ever added within a version.
pub const SCHEMA: u32 = 1;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Bulkhead-Signature";
/// The header carrying the time of signing, in seconds since 1970, covered by the signature.
pub const TIMESTAMP_HEADER: &str = "X-Bulkhead-Timestamp";
/// The header naming the event (`change.applied`, ...).
pub const EVENT_HEADER: &str = "X-Bulkhead-Event";
/// The header carrying the event's id, the same at every attempt.
pub const ID_HEADER: &str = "X-Bulkhead-Event-Id";

/// The JSON body, field for field as the README documents it.
#[derive(Serialize)]
struct JsonBody<'a> {
    schema: u32,
    id: &'a str,
    event: &'a str,
    time: &'a str,
    summary: String,
    environment: &'a str,
    owner: &'a str,
    state: Option<&'a str>,
    principal: Option<&'a str>,
    change: Option<&'a str>,
    version: Option<i64>,
    breakglass: Option<&'a str>,
    lock_id: Option<&'a str>,
    lock_holder: Option<&'a str>,
    approvers: &'a [String],
    required_approvals: Option<u32>,
    beyond_plan: Option<BeyondPlan<'a>>,
    action: &'a str,
    decision: &'a str,
    status: Option<u16>,
    reason: Option<&'a str>,
    signals: &'a [crate::audit::Raised],
    drifted: Option<BeyondPlan<'a>>,
}

#[derive(Serialize)]
struct BeyondPlan<'a> {
    addresses: &'a [String],
    count: usize,
}

/// The body of `event` in `format`.
pub fn render(event: &Event, format: NotifyFormat) -> Vec<u8> {
    match format {
        NotifyFormat::Json => json(event),
        NotifyFormat::Slack => slack(event),
    }
}

/// The event as JSON of schema [`SCHEMA`].
pub fn json(event: &Event) -> Vec<u8> {
    let body = JsonBody {
        schema: SCHEMA,
        id: &event.id,
        event: event.kind.as_str(),
        time: &event.time,
        summary: event.summary(),
        environment: &event.environment,
        owner: &event.owner,
        state: event.state.as_deref(),
        principal: event.principal.as_deref(),
        change: event.change.as_deref(),
        version: event.version,
        breakglass: event.breakglass.as_deref(),
        lock_id: event.lock_id.as_deref(),
        lock_holder: event.lock_holder.as_deref(),
        approvers: &event.approvers,
        required_approvals: event.required_approvals,
        beyond_plan: event
            .beyond_plan
            .as_ref()
            .map(|(addresses, count)| BeyondPlan {
                addresses,
                count: *count,
            }),
        signals: &event.signals,
        drifted: event.drifted.as_ref().map(|(addresses, count)| BeyondPlan {
            addresses,
            count: *count,
        }),
        action: &event.action,
        decision: event.decision.as_str(),
        status: event.status,
        reason: event.reason.as_deref(),
    };
    // Strings, numbers and lists of them: serializing cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The most characters of text Slack shows in one section block (it allows 3000).
const SLACK_SECTION: usize = 2900;

/// `text` made safe for Slack's mrkdwn: `&`, `<` and `>` escaped as Slack asks, so that text
/// from a request (a reason, a title, a state name) cannot mention `@channel`, link elsewhere
/// or break the message.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `text` escaped ([`slack_escape`]) in at most `limit` characters, cut between characters
/// of `text` (never inside an escape) and marked `…` when cut.
fn escaped_at_most(text: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    for c in text.chars() {
        let escaped = slack_escape(c.encode_utf8(&mut [0; 4]));
        let n = escaped.chars().count();
        if count + n > limit {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
        count += n;
    }
    out
}

/// The event as a Slack incoming-webhook message: the summary as its `text` (what
/// notifications show), and blocks with a heading and the facts. Every piece of text from a
/// request is escaped, and the text cut to what Slack accepts in a block.
pub fn slack(event: &Event) -> Vec<u8> {
    let summary = escaped_at_most(&event.summary(), SLACK_SECTION);
    let env = slack_escape(&event.environment);
    let heading = match event.kind {
        NotifyEvent::BreakglassOpened | NotifyEvent::StateRefused => {
            format!(":rotating_light: *{}* in *{env}*", event.kind)
        }
        _ => format!("*{}* in *{env}*", event.kind),
    };
    let context = format!("owner {} · event {}", event.owner, event.id);
    let body = serde_json::json!({
        "text": summary,
        "blocks": [
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": format!("{heading}\n{summary}") }
            },
            {
                "type": "context",
                "elements": [
                    { "type": "mrkdwn", "text": escaped_at_most(&context, SLACK_SECTION) }
                ]
            }
        ]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The signature header's value for `body` sent at `timestamp` (seconds since 1970).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` is the signature of `body` at `timestamp` under `secret`, compared in
/// constant time: what a receiver written in Rust would do.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    use subtle::ConstantTimeEq;
    sign(secret, timestamp, body)
        .as_bytes()
        .ct_eq(signature.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    fn event() -> Event {
        Event {
            id: "prod:3:state.refused".into(),
            kind: NotifyEvent::StateRefused,
            time: "2026-12-01T10:00:00.000Z".into(),
            environment: "prod".into(),
            owner: "team:platform".into(),
            state: Some("network".into()),
            principal: Some("user:alice".into()),
            change: None,
            version: None,
            breakglass: None,
            lock_id: Some("<!channel> & co".into()),
            lock_holder: None,
            approvers: Vec::new(),
            required_approvals: None,
            beyond_plan: None,
            signals: Vec::new(),
            drifted: None,
            action: "state:lock".into(),
            decision: Outcome::Deny,
            status: Some(423),
            reason: Some("user:alice may not lock prod <https://evil|click>".into()),
        }
    }

    #[test]
    fn the_json_body_has_every_field_of_its_schema() {
        let body: serde_json::Value = serde_json::from_slice(&json(&event())).unwrap();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "schema",
                "id",
                "event",
                "time",
                "summary",
                "environment",
                "owner",
                "state",
                "principal",
                "change",
                "version",
                "breakglass",
                "lock_id",
                "lock_holder",
                "approvers",
                "required_approvals",
                "beyond_plan",
                "action",
                "decision",
                "status",
                "reason",
                "signals",
                "drifted"
            ]
        );
        assert_eq!(body["schema"], 1);
        assert_eq!(body["event"], "state.refused");
        assert_eq!(body["change"], serde_json::Value::Null);
        assert_eq!(body["status"], 423);
    }

    #[test]
    fn slack_text_from_requests_is_escaped() {
        let body: serde_json::Value = serde_json::from_slice(&slack(&event())).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("&lt;https://evil|click&gt;"), "{text}");
        assert!(!text.contains('<'), "{text}");
        let section = body["blocks"][0]["text"]["text"].as_str().unwrap();
        assert!(
            section.starts_with(":rotating_light: *state.refused* in *prod*"),
            "{section}"
        );
        assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
        let mut long = event();
        long.reason = Some("<".repeat(10_000));
        let body: serde_json::Value = serde_json::from_slice(&slack(&long)).unwrap();
        assert!(body["text"].as_str().unwrap().chars().count() <= SLACK_SECTION + 1);
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let body = json(&event());
        let sig = sign(b"s3cret", 1_700_000_000, &body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify(b"s3cret", 1_700_000_000, &body, &sig));
        assert!(!verify(b"s3cret", 1_700_000_001, &body, &sig));
        assert!(!verify(b"other", 1_700_000_000, &body, &sig));
        let mut edited = body.clone();
        edited[10] ^= 1;
        assert!(!verify(b"s3cret", 1_700_000_000, &edited, &sig));
    }
}
