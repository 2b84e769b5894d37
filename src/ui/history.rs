//! A state's history: every version with who wrote it, under which change, and what it
//! changed; and the difference between two versions, sensitive values masked (by
//! [`crate::history::diff`], before anything reaches this page).

use maud::{html, Markup};

use super::{change_href, history_href, time, Frame};
use crate::history::{Diff, HistoryEntry};

/// Two versions compared.
pub struct Compared<'a> {
    pub from: i64,
    pub to: i64,
    pub diff: &'a Diff,
}

fn diff(compared: &Compared<'_>) -> Markup {
    let d = compared.diff;
    html! {
        h2 { "From version " (compared.from) " to version " (compared.to) }
        @if !d.comparable {
            p.refusal { "One of the versions is not a readable Terraform state (an encrypted OpenTofu state, say): only their hashes can be compared." }
        } @else if d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty() {
            p.muted { "No resource changed." }
        } @else {
            table.diff {
                thead { tr { th { "" } th { "Resource" } th { "Attribute" } th { "Before" } th { "After" } } }
                tbody {
                    @for address in &d.added {
                        tr { td.plus { "+" } td.mono { (address) } td colspan="3" { span.muted { "added" } } }
                    }
                    @for address in &d.removed {
                        tr { td.minus { "-" } td.mono { (address) } td colspan="3" { span.muted { "removed" } } }
                    }
                    @for changed in &d.changed {
                        @for (i, attr) in changed.attributes.iter().enumerate() {
                            tr {
                                td.tilde { @if i == 0 { "~" } }
                                td.mono { @if i == 0 { (changed.address) } }
                                td.mono { (attr.name) }
                                td.mono.minus { @if let Some(b) = &attr.before { (b) } @else { span.muted { "(none)" } } }
                                td.mono.plus { @if let Some(a) = &attr.after { (a) } @else { span.muted { "(none)" } } }
                            }
                        }
                        @if changed.attributes.is_empty() {
                            tr { td.tilde { "~" } td.mono { (changed.address) } td colspan="3" {} }
                        }
                    }
                }
            }
        }
    }
}

/// `/ui/history/{env}/{state}[?from=A&to=B]`.
pub fn history(
    frame: &Frame,
    env: &str,
    state: &str,
    entries: &[HistoryEntry],
    compared: Option<&Compared<'_>>,
) -> Markup {
    let newest = entries.last().map(|e| e.meta.version);
    let before_newest = entries.iter().rev().nth(1).map(|e| e.meta.version);
    let (from, to) = match compared {
        Some(c) => (Some(c.from), Some(c.to)),
        None => (before_newest, newest),
    };
    let select = |name: &str, chosen: Option<i64>| {
        html! {
            select name=(name) {
                @for e in entries.iter().rev() {
                    option value=(e.meta.version) selected[Some(e.meta.version) == chosen] { "version " (e.meta.version) }
                }
            }
        }
    };
    frame.page(
        &format!("{env}/{state}"),
        html! {
            h1 { "State " span.mono { (env) "/" (state) } }
            @if entries.len() >= 2 {
                form.filters method="get" action=(history_href(env, state)) {
                    label { "From" (select("from", from)) }
                    label { "To" (select("to", to)) }
                    button type="submit" { "Compare" }
                }
            }
            @if let Some(compared) = compared { (diff(compared)) }
            h2 { "Versions" }
            @if entries.is_empty() {
                p.muted { "No version has been written." }
            } @else {
                table {
                    thead { tr {
                        th { "Version" } th { "Serial" } th { "Written by" } th { "When" }
                        th { "Operation" } th { "Change" } th { "Resources" } th { "SHA-256" }
                    } }
                    tbody {
                        @for e in entries.iter().rev() {
                            @let m = &e.meta;
                            tr {
                                td {
                                    (m.version)
                                    @if m.deleted { " " span.badge.deny { "deleted" } }
                                    @if m.forced { " " span.badge.error { "forced" } }
                                }
                                td { @if let Some(serial) = m.serial { (serial) } }
                                td { (m.principal) }
                                td { (time(&m.created_at)) }
                                td { @if let Some(op) = &m.operation { (op) } }
                                td {
                                    @if let Some(id) = &e.change { a href=(change_href(id)) { (id) } }
                                    @if !m.beyond_plan.is_empty() { " " span.badge.diverged { "beyond plan" } }
                                }
                                td.mono {
                                    span.plus { "+" (e.added) } " " span.tilde { "~" (e.changed) } " " span.minus { "-" (e.removed) }
                                }
                                td.mono title=(m.sha256) { (m.sha256.get(..12).unwrap_or(&m.sha256)) }
                            }
                        }
                    }
                }
            }
        },
    )
}
