//! The dashboard's pages (`/ui`), rendered as HTML from what the operations answer: the
//! environments, the states of one, a state's history and the difference between two of its
//! versions, the changes with their plans and approve / reject forms, and the audit log.
//!
//! Rendering only: no I/O, no decision. What a page shows was read, and allowed, by the same
//! operations the API calls; a button here only posts a form that the server judges by its
//! own rules. Every text is escaped by the templates (maud), so that a state address or a
//! plan carrying HTML is shown as text; the pages carry no script at all, and the server
//! forbids any in their Content-Security-Policy.

mod audit;
mod changes;
mod environments;
mod history;
mod layout;
mod sign_in;

pub use audit::{audit, AuditForm};
pub use changes::{change, changes, Notice};
pub use environments::{environment, environments};
pub use history::{history, Compared};
pub use layout::{refusal, Frame, STYLE};
pub use sign_in::sign_in;

use maud::{html, Markup};

/// A stored time as a person reads it at a glance: `2026-12-03 14:12:16`, in UTC.
fn when(stored: &str) -> String {
    let text = stored.replace('T', " ");
    let text = text.trim_end_matches('Z');
    let text = text.split('.').next().unwrap_or(text);
    text.split('+').next().unwrap_or(text).to_string()
}

/// A time with its exact form on hover.
fn time(stored: &str) -> Markup {
    html! { time datetime=(stored) title=(stored) { (when(stored)) } }
}

/// A path segment made safe for an address (state names may contain `/`, kept as such).
fn path(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The address of a state's history page.
fn history_href(env: &str, state: &str) -> String {
    format!("/ui/history/{}/{}", path(env), path(state))
}

/// The address of a change's page.
pub fn change_href(id: &str) -> String {
    format!("/ui/changes/{}", path(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_escape_what_is_not_a_plain_name() {
        assert_eq!(
            history_href("prod", "app/<x>\"y"),
            "/ui/history/prod/app/%3Cx%3E%22y"
        );
        assert_eq!(
            change_href("prod-3\"><b>"),
            "/ui/changes/prod-3%22%3E%3Cb%3E"
        );
    }

    #[test]
    fn times_are_short_for_people() {
        assert_eq!(when("2026-12-03T14:12:16.123456Z"), "2026-12-03 14:12:16");
        assert_eq!(when("2026-12-03T14:12:16+00:00"), "2026-12-03 14:12:16");
    }
}
