//! The audit log, with the filters of `bulkhead audit log`: the records the principal may read
//! (`audit:read`), newest first.

use maud::{html, Markup};

use super::{history_href, time, Frame};
use crate::audit::Record;

/// The filters as the form was sent, to show them again.
#[derive(Debug, Default)]
pub struct AuditForm<'a> {
    pub env: &'a str,
    pub state: &'a str,
    pub principal: &'a str,
    pub action: &'a str,
    pub decision: &'a str,
    pub since: &'a str,
    pub until: &'a str,
}

fn field(label: &str, name: &str, value: &str, hint: &str) -> Markup {
    html! { label { (label) input type="text" name=(name) value=(value) placeholder=(hint); } }
}

/// `/ui/audit`: `records` oldest first, shown newest first.
pub fn audit(frame: &Frame, form: &AuditForm<'_>, records: &[Record], more: bool) -> Markup {
    frame.page(
        "Audit log",
        html! {
            h1 { "Audit log" }
            form.filters method="get" action="/ui/audit" {
                (field("Environment", "env", form.env, "prod, or server"))
                (field("State", "state", form.state, "network"))
                (field("Principal", "principal", form.principal, "alice or service:ci"))
                (field("Action", "action", form.action, "state:write"))
                label { "Decision"
                    select name="decision" {
                        @for (value, text) in [("", "any"), ("allow", "allow"), ("deny", "deny"), ("error", "error")] {
                            option value=(value) selected[form.decision == value] { (text) }
                        }
                    }
                }
                (field("Since", "since", form.since, "2026-12-01T00:00:00Z"))
                (field("Until", "until", form.until, "RFC 3339"))
                button type="submit" { "Filter" }
            }
            @if records.is_empty() {
                p.muted { "No record matches." }
            } @else {
                @if more { p.muted { "The newest " (records.len()) " matching records; narrow the filters to see older ones." } }
                table {
                    thead { tr {
                        th { "When" } th { "Principal" } th { "Action" } th { "Environment / state" }
                        th { "Decision" } th { "Status" } th { "Reason" } th { "From" }
                    } }
                    tbody {
                        @for r in records.iter().rev() {
                            tr {
                                td { (time(&r.time)) }
                                td { @if let Some(p) = &r.principal { (p) } @else { span.muted { "—" } } }
                                td.mono { (r.action) }
                                td.mono {
                                    @match (&r.environment, &r.state) {
                                        (Some(env), Some(state)) => { a href=(history_href(env, state)) { (env) "/" (state) } }
                                        (Some(env), None) => { (env) }
                                        _ => { span.muted { "—" } }
                                    }
                                    @if let Some(change) = &r.change { br; (change) }
                                }
                                td { span class={ "badge " (r.decision.as_str()) } { (r.decision.as_str()) } }
                                td { @if let Some(s) = r.status { (s) } }
                                td {
                                    @if let Some(grant) = &r.breakglass { span.badge.deny { "break-glass " (grant) } " " }
                                    @if let Some(reason) = &r.reason { (reason) }
                                }
                                td.mono { @if let Some(s) = &r.source { (s) } }
                            }
                        }
                    }
                }
            }
        },
    )
}
