//! The environments a principal may read, and the states of one: who owns it, whether it is
//! protected, what awaits approval, and who holds each lock, since when, for what.

use maud::{html, Markup};

use super::{change_href, history_href, path, time, Frame};
use crate::changes::Change;
use crate::drift::Kind;
use crate::history::EnvironmentStatus;
use crate::operations::drift::{SignalRow, StateHealth};

/// The protection of an environment, loud when it is protected.
fn protection(env: &EnvironmentStatus) -> Markup {
    html! {
        @if env.protected {
            span.badge.prod title="changes need an approved change request" { "protected" }
        } @else {
            span.badge { "open" }
        }
    }
}

fn change_links(ids: &[String]) -> Markup {
    html! {
        @for (i, id) in ids.iter().enumerate() {
            @if i > 0 { ", " }
            a href=(change_href(id)) { (id) }
        }
        @if ids.is_empty() { span.muted { "—" } }
    }
}

/// `/ui`: every environment the principal may read.
pub fn environments(frame: &Frame, envs: &[EnvironmentStatus]) -> Markup {
    frame.page(
        "Environments",
        html! {
            h1 { "Environments" }
            @if envs.is_empty() {
                p.muted { (frame.who) " may read no environment." }
            } @else {
                table {
                    thead { tr {
                        th { "Environment" } th { "Owner" } th { "Protection" } th { "States" }
                        th { "Locked" } th { "Awaiting approval" } th { "Approved" }
                        th { "Diverged" } th { "Break-glass" }
                    } }
                    tbody {
                        @for env in envs {
                            tr {
                                td { a href={ "/ui/environments/" (path(&env.environment)) } { strong { (env.environment) } } }
                                td { (env.owner) }
                                td { (protection(env)) }
                                @if let Some(why) = &env.unavailable {
                                    td colspan="6" { span.loud { "not served: " } (why) }
                                } @else {
                                    td { (env.states.iter().filter(|s| !s.deleted).count()) }
                                    td { (env.states.iter().filter(|s| s.lock.is_some()).count()) }
                                    td { (change_links(&env.pending_changes)) }
                                    td { (change_links(&env.approved_changes)) }
                                    td {
                                        @if env.diverged_changes.is_empty() { span.muted { "—" } }
                                        @else { span.loud { (change_links(&env.diverged_changes)) } }
                                    }
                                    td {
                                        @if env.breakglass.is_empty() { span.muted { "—" } }
                                        @for grant in &env.breakglass {
                                            span.badge.deny { "open: " (grant.principal) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A state's health: what its signals and drift reports leave open, or `ok`.
fn health(state: Option<&StateHealth>) -> Markup {
    let Some(state) = state else {
        return html! { span.badge.allow title="no open signal, no drift reported" { "ok" } };
    };
    let open: Vec<&SignalRow> = state.signals.iter().filter(|s| s.is_open()).collect();
    let drift = state.drift.as_ref();
    html! {
        @if state.open {
            span.badge.deny { "needs a look" }
        } @else {
            span.badge.allow { "ok" }
        }
        @for signal in &open {
            br;
            span.loud title=(signal.evidence) {
                "signal " (signal.id) ": "
                (Kind::parse(&signal.kind).map_or(signal.kind.as_str(), |k| k.describe()))
            }
        }
        @if let Some(held) = &state.held_long {
            br;
            span.loud title={ "lock " (held.lock_id) " held by " (held.holder) } {
                "lock held since " (held.since)
            }
        }
        @if let Some(d) = drift {
            br;
            @if d.count == 0 {
                span.muted title={ "reported " (d.reported_at) } { "no drift" }
            } @else if d.is_open() {
                span.loud title={ "since " (d.drifted_since.as_deref().unwrap_or("?")) } {
                    "drift: " (d.count) " resource" @if d.count != 1 { "s" }
                }
            } @else {
                span.muted title=(d.reason.as_deref().unwrap_or("")) {
                    "drift acknowledged by " (d.acknowledged_by.as_deref().unwrap_or("?"))
                }
            }
        } @else {
            br; span.muted { "never reported" }
        }
    }
}

/// `/ui/environments/{env}`: its states with their locks and health, and its changes.
pub fn environment(
    frame: &Frame,
    env: &EnvironmentStatus,
    changes: &[Change],
    health_of: &[StateHealth],
) -> Markup {
    frame.page(
        &env.environment,
        html! {
            h1 { "Environment " (env.environment) " " (protection(env)) }
            dl.grid.card {
                dt { "Owner" } dd { (env.owner) }
                @if let Some(lease) = env.lock_lease_seconds {
                    dt { "Lock lease" } dd { (lease) " s" }
                }
                @if !env.write_from.is_empty() {
                    dt { "Written only from" } dd.mono { (env.write_from.join(", ")) }
                }
                @if !env.read_from.is_empty() {
                    dt { "Answers only" } dd.mono { (env.read_from.join(", ")) }
                }
                @if let Some(why) = &env.unavailable {
                    dt { "Not served" } dd.loud { (why) }
                }
            }
            h2 { "States" }
            @if env.states.is_empty() {
                p.muted { "No state has been written yet." }
            } @else {
                table {
                    thead { tr {
                        th { "State" } th { "Version" } th { "Serial" } th { "Written by" }
                        th { "When" } th { "Lock held by" } th { "Since" } th { "Operation" }
                        th { "Health" }
                    } }
                    tbody {
                        @for state in &env.states {
                            tr {
                                td {
                                    a.mono href=(history_href(&env.environment, &state.name)) { (state.name) }
                                    @if state.deleted { " " span.badge.deny { "deleted" } }
                                }
                                td { (state.version) }
                                td { @if let Some(serial) = state.serial { (serial) } }
                                td { (state.principal) }
                                td { (time(&state.updated_at)) }
                                @if let Some(lock) = &state.lock {
                                    td {
                                        strong { (crate::principal::describe(&lock.principal, lock.branch.as_deref())) }
                                        @if let Some(who) = &lock.who { br; span.muted title="what the client says, not what it proved" { "says " (who) } }
                                    }
                                    td {
                                        (time(&lock.since))
                                        @if lock.lease_ran_out { " " span.badge.error { "lease ran out" } }
                                    }
                                    td { (lock.operation) }
                                } @else {
                                    td colspan="3" { span.muted { "not locked" } }
                                }
                                td.health { (health(health_of.iter().find(|h| h.state == state.name))) }
                            }
                        }
                    }
                }
            }
            h2 { "Changes" }
            (super::changes::table(changes))
        },
    )
}
