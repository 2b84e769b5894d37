//! Change requests: the list, and one change with its plan summary (destroys and replacements
//! loud), its approvals, and the approve / reject forms, which the server judges by the same
//! rules as `bulkhead change approve` (never the author; the same verdict).

use maud::{html, Markup};

use super::{change_href, history_href, time, Frame};
use crate::changes::{Change, Listing};

/// What happened to the form a page answers.
pub enum Notice {
    /// Done: what was done.
    Done(String),
    /// Refused: the server's sentence.
    Refused(String),
}

fn readiness(change: &Change) -> Markup {
    let label = if change.readiness.is_empty() {
        change.status.as_str()
    } else {
        change.readiness.as_str()
    };
    html! {
        span class={ "badge " (label) } { (label) }
        @if !change.diverged.is_empty() { " " span.badge.diverged { "diverged" } }
    }
}

/// The table of `changes`, newest first.
pub(super) fn table(changes: &[Change]) -> Markup {
    html! {
        @if changes.is_empty() {
            p.muted { "No change requests." }
        } @else {
            table {
                thead { tr {
                    th { "Change" } th { "State" } th { "Title" } th { "Author" } th { "Proposed" }
                    th { "Plan" } th { "Approvals" } th { "Status" }
                } }
                tbody {
                    @for c in changes.iter().rev() {
                        @let (add, change, destroy) = c.summary.counts();
                        tr {
                            td { a href=(change_href(&c.id)) { (c.id) } }
                            td.mono { (c.state) }
                            td { (c.title) }
                            td { (c.author) }
                            td { (time(&c.created_at)) }
                            td.mono {
                                span.plus { "+" (add) } " " span.tilde { "~" (change) } " "
                                @if destroy > 0 { span.loud { "-" (destroy) } } @else { span.minus { "-0" } }
                            }
                            td { (c.approvals.len()) " of " (c.required) }
                            td { (readiness(c)) }
                        }
                    }
                }
            }
        }
    }
}

/// `/ui/changes`: the changes of the environments the principal may read.
pub fn changes(frame: &Frame, listing: &Listing, environment: Option<&str>) -> Markup {
    frame.page(
        "Changes",
        html! {
            h1 {
                "Changes"
                @if let Some(env) = environment { " of " (env) }
            }
            (table(&listing.changes))
        },
    )
}

fn addresses(title: &str, class: &str, list: &[String]) -> Markup {
    html! {
        @if !list.is_empty() {
            h3 class=(class) { (title) " (" (list.len()) ")" }
            ul.mono {
                @for address in list { li class=(class) { (address) } }
            }
        }
    }
}

/// `/ui/changes/{id}`: one change, with its forms while it is open.
pub fn change(frame: &Frame, c: &Change, notice: Option<&Notice>) -> Markup {
    let s = &c.summary;
    let (add, change, destroy) = s.counts();
    frame.page(
        &c.id,
        html! {
            h1 { "Change " (c.id) " " (readiness(c)) }
            @match notice {
                Some(Notice::Done(text)) => { p.notice role="status" { (text) } }
                Some(Notice::Refused(text)) => { p.refusal role="alert" { (text) } }
                None => {}
            }
            dl.grid.card {
                dt { "Title" } dd { (c.title) }
                dt { "State" } dd { a.mono href=(history_href(&c.environment, &c.state)) { (c.environment) "/" (c.state) } }
                dt { "Author" } dd { (c.author) }
                dt { "Proposed" } dd { (time(&c.created_at)) }
                @if let Some(branch) = &c.branch { dt { "Branch" } dd.mono { (branch) } }
                @if let Some(commit) = &c.commit { dt { "Commit" } dd.mono { (commit) } }
                dt { "Plan" } dd.mono { (c.plan_sha256) " (revision " (c.revision) ")" }
                @if let Some(version) = &s.terraform_version { dt { "Terraform" } dd { (version) } }
                dt { "Approvals" } dd {
                    (c.approvals.len()) " of " (c.required) " required"
                    @for a in &c.approvals {
                        br; (a.approver) " at " (time(&a.approved_at)) ", valid until " (time(&a.expires_at))
                    }
                }
                @if let Some(attested) = &c.attestation {
                    dt { "Attested by" } dd { (attested.principal) " at " (time(&attested.at)) }
                }
                @if let Some(by) = &c.closed_by {
                    dt { "Closed by" } dd {
                        (by)
                        @if let Some(at) = &c.closed_at { " at " (time(at)) }
                        @if let Some(reason) = &c.reason { ": " em { (reason) } }
                    }
                }
                @if let Some(version) = c.applied_version { dt { "Applied as" } dd { "version " (version) } }
            }
            @if !c.diverged.is_empty() {
                p.refusal role="alert" {
                    "DIVERGED: writes under this change touched resources beyond its approved plan: "
                    span.mono { (c.diverged.join(", ")) }
                }
            }
            h2 {
                "Plan: "
                span.plus { (add) " to add" } ", " span.tilde { (change) " to change" } ", "
                @if destroy > 0 { span.loud { (destroy) " to destroy" } } @else { "0 to destroy" }
            }
            @if s.destroys_anything() {
                p.refusal {
                    "This plan destroys "
                    @if !s.destroy.is_empty() { (s.destroy.len()) " resource(s)" }
                    @if !s.destroy.is_empty() && !s.replace.is_empty() { " and " }
                    @if !s.replace.is_empty() { "replaces " (s.replace.len()) " (destroyed and created again)" }
                    ". Read the addresses before approving."
                }
            }
            (addresses("Destroy", "loud", &s.destroy))
            (addresses("Replace", "loud", &s.replace))
            (addresses("Add", "plus", &s.add))
            (addresses("Change", "tilde", &s.change))
            @if c.status == crate::changes::Status::Open {
                h2 { "Decide" }
                div.card.decide {
                    form.inline method="post" action={ (change_href(&c.id)) "/approve" } {
                        (frame.csrf_field())
                        button.approve type="submit" { "Approve" }
                    }
                    form.inline method="post" action={ (change_href(&c.id)) "/reject" } {
                        (frame.csrf_field())
                        input type="text" name="reason" maxlength="4096" placeholder="why it is rejected" required;
                        " "
                        button.reject type="submit" { "Reject" }
                    }
                }
                p.muted { "The server decides: the author of a change can never approve it, and only those who may approve in " (c.environment) " can." }
            }
        },
    )
}
