//! `bulkhead state history|show|diff|rollback|locks|unlock` and `bulkhead status`: who changed what, and how
//! to undo it. Clients of a running server.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::change::ServerArgs;
use super::{change_id, print_json, CliError, Format};
use crate::history::{Diff, EnvironmentStatus, HistoryEntry};
use crate::text::printable;

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Every version of a state: when, who, under which change, what it added/changed/removed.
    History(AddressArgs),
    /// Print a version's content (default: the newest).
    Show(ShowArgs),
    /// What changed between two versions, resource by resource (sensitive values masked).
    Diff(DiffArgs),
    /// Write an earlier version's content as a new version (history is kept). Needs
    /// state:rollback; a protected environment needs an approved change (--change).
    Rollback(RollbackArgs),
    /// The locks held: holder, time since the holder last wrote or renewed, and whether the
    /// environment's lock_lease has run out (another writer's LOCK may then take it over).
    Locks(LocksArgs),
    /// Release a state's lock, whoever holds it (a force-unlock: needs state:force-unlock).
    /// Without --id it shows the lock (holder, idle time, lease) and releases nothing; with
    /// --id it releases that lock only, so a newer lock taken meanwhile is left alone.
    ///
    /// Example: bulkhead state unlock prod/network --id 0b7c...
    Unlock(UnlockArgs),
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// ENVIRONMENT/NAME, e.g. prod/network.
    address: String,
    /// The ID of the lock to release, as `state locks` (or terraform's error) shows it.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

/// A held lock as `state locks` lists it.
#[derive(Debug, serde::Serialize)]
struct HeldRow {
    environment: String,
    state: String,
    lock_id: String,
    holder: String,
    operation: String,
    since: String,
    active_at: String,
    /// Seconds since the holder last wrote or renewed, when its time can be read.
    idle_seconds: Option<i64>,
    lock_lease_seconds: Option<u64>,
    lease_ran_out: bool,
}

#[derive(Debug, Args)]
pub struct AddressArgs {
    /// ENVIRONMENT/NAME, e.g. prod/network.
    pub(super) address: String,
    #[arg(long, value_enum, default_value_t)]
    pub(super) format: Format,
    #[command(flatten)]
    pub(super) server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// ENVIRONMENT/NAME.
    address: String,
    #[arg(long)]
    version: Option<i64>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// ENVIRONMENT/NAME.
    address: String,
    from: i64,
    to: i64,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// ENVIRONMENT/NAME.
    address: String,
    /// The version to restore.
    #[arg(long)]
    to: i64,
    /// The approved change request for this rollback (protected environments).
    #[arg(long)]
    change: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn check_address(address: &str) -> Result<(), CliError> {
    match address.split_once('/') {
        Some((env, name)) if !env.is_empty() && !name.is_empty() => Ok(()),
        _ => Err(CliError::Usage(format!(
            "`{address}`: write ENVIRONMENT/NAME, e.g. prod/network"
        ))),
    }
}

impl StateCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            StateCommand::History(args) => {
                check_address(&args.address)?;
                let entries = args.server.client()?.history(&args.address).await?;
                match args.format {
                    Format::Json => print_json(&entries)?,
                    Format::Human => print!("{}", history_table(&entries)),
                }
            }
            StateCommand::Show(args) => {
                check_address(&args.address)?;
                let client = args.server.client()?;
                let version = match args.version {
                    Some(v) => v,
                    None => client
                        .history(&args.address)
                        .await?
                        .last()
                        .map(|e| e.meta.version)
                        .ok_or_else(|| {
                            CliError::Failed(anyhow::anyhow!("{} has no versions", args.address))
                        })?,
                };
                let content = client.version(&args.address, version).await?;
                println!("{}", String::from_utf8_lossy(&content).trim_end());
            }
            StateCommand::Diff(args) => {
                check_address(&args.address)?;
                let diff = args
                    .server
                    .client()?
                    .diff(&args.address, args.from, args.to)
                    .await?;
                match args.format {
                    Format::Json => print_json(&diff)?,
                    Format::Human => print!("{}", diff_text(&diff, args.from, args.to)),
                }
            }
            StateCommand::Rollback(args) => {
                check_address(&args.address)?;
                let change = args.change.as_deref().map(change_id).transpose()?;
                let answer = args
                    .server
                    .client()?
                    .rollback(&args.address, args.to, change)
                    .await?;
                println!(
                    "{} rolled back to version {}: now version {} (serial {})",
                    printable(&args.address),
                    args.to,
                    printable(&answer["version"].to_string()),
                    printable(&answer["serial"].to_string())
                );
            }
            StateCommand::Unlock(args) => {
                check_address(&args.address)?;
                let client = args.server.client()?;
                let Some(id) = &args.id else {
                    let (env, name) = args.address.split_once('/').unwrap_or_default();
                    let status = client.status().await?;
                    let rows: Vec<HeldRow> = held_locks(&status, Some(env), chrono::Utc::now())
                        .into_iter()
                        .filter(|r| r.state == name)
                        .collect();
                    if rows.is_empty() {
                        println!("{} is not locked.", printable(&args.address));
                        return Ok(ExitCode::SUCCESS);
                    }
                    print!("{}", locks_table(&rows));
                    println!(
                        "Nothing was released: to release this lock, run `bulkhead state unlock {} --id {}`.",
                        printable(&args.address),
                        printable(&rows[0].lock_id)
                    );
                    return Ok(ExitCode::from(1));
                };
                client.force_unlock(&args.address, id).await?;
                println!(
                    "released lock {} of {}",
                    printable(id),
                    printable(&args.address)
                );
            }
            StateCommand::Locks(args) => {
                let status = args.server.client()?.status().await?;
                let rows = held_locks(&status, args.env.as_deref(), chrono::Utc::now());
                match args.format {
                    Format::Json => print_json(&rows)?,
                    Format::Human => print!("{}", locks_table(&rows)),
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn held_locks(
    envs: &[EnvironmentStatus],
    only: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<HeldRow> {
    let mut rows = Vec::new();
    for e in envs
        .iter()
        .filter(|e| only.is_none_or(|o| o == e.environment))
    {
        for s in &e.states {
            let Some(l) = &s.lock else { continue };
            let active_at = l.active_at.clone().unwrap_or_else(|| l.since.clone());
            let idle_seconds = crate::time::Timestamp::parse(&active_at).ok().map(|t| {
                now.signed_duration_since(t.as_datetime())
                    .num_seconds()
                    .max(0)
            });
            rows.push(HeldRow {
                environment: e.environment.clone(),
                state: s.name.clone(),
                lock_id: l.id.clone(),
                holder: l.principal.clone(),
                operation: l.operation.clone(),
                since: l.since.clone(),
                active_at,
                idle_seconds,
                lock_lease_seconds: e.lock_lease_seconds,
                lease_ran_out: l.lease_ran_out,
            });
        }
    }
    rows
}

/// Seconds as a person reads an age: `42s`, `7m12s`, `3h05m`, `2d4h`.
fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn locks_table(rows: &[HeldRow]) -> String {
    if rows.is_empty() {
        return "No locks are held.\n".into();
    }
    let mut out = format!(
        "{:<28}  {:<22}  {:>9}  {:<22}  {:<38}  LEASE\n",
        "STATE", "HOLDER", "IDLE", "OPERATION", "LOCK ID"
    );
    for r in rows {
        let lease = match (r.lock_lease_seconds, r.lease_ran_out) {
            (None, _) => "none".to_string(),
            (Some(l), true) => format!("RAN OUT ({}): may be taken over", age(l as i64)),
            (Some(l), false) => age(l as i64),
        };
        out.push_str(&format!(
            "{:<28}  {:<22}  {:>9}  {:<22}  {:<38}  {lease}\n",
            printable(&format!("{}/{}", r.environment, r.state)),
            printable(&r.holder),
            r.idle_seconds.map_or("?".to_string(), age),
            printable(&r.operation),
            printable(&r.lock_id),
        ));
    }
    out
}

fn history_table(entries: &[HistoryEntry]) -> String {
    let mut out = format!(
        "{:>4}  {:<27}  {:<22}  {:<10}  {:>6}  {:>9}  {:<12}  CHANGES\n",
        "VER", "TIME", "BY", "CHANGE", "SERIAL", "SIZE", "OPERATION"
    );
    for e in entries {
        let m = &e.meta;
        let what = if m.deleted {
            "deleted".to_string()
        } else {
            format!("+{} ~{} -{}", e.added, e.changed, e.removed)
        };
        out.push_str(&format!(
            "{:>4}  {:<27}  {:<22}  {:<10}  {:>6}  {:>9}  {:<12}  {what}{}{}\n",
            m.version,
            printable(&m.created_at),
            printable(&m.principal),
            printable(e.change.as_deref().unwrap_or("-")),
            m.serial.map_or("-".to_string(), |s| s.to_string()),
            m.size,
            printable(m.operation.as_deref().unwrap_or("-")),
            if m.forced { " (forced)" } else { "" },
            if m.beyond_plan.is_empty() {
                String::new()
            } else {
                format!(
                    "  !! DIVERGED: beyond its change's plan: {}",
                    printable(&crate::text::first_of(&m.beyond_plan, 10))
                )
            }
        ));
    }
    out
}

fn diff_text(d: &Diff, from: i64, to: i64) -> String {
    if !d.comparable {
        return format!("Versions {from} and {to} cannot be compared resource by resource (an encrypted state?).\n");
    }
    let mut out = format!(
        "From version {from} to {to}: {} added, {} changed, {} removed.\n",
        d.added.len(),
        d.changed.len(),
        d.removed.len()
    );
    for a in &d.added {
        out.push_str(&format!("  + {}\n", printable(a)));
    }
    for c in &d.changed {
        out.push_str(&format!("  ~ {}\n", printable(&c.address)));
        for attr in &c.attributes {
            out.push_str(&format!(
                "      {}: {} -> {}\n",
                printable(&attr.name),
                printable(attr.before.as_deref().unwrap_or("(none)")),
                printable(attr.after.as_deref().unwrap_or("(none)"))
            ));
        }
    }
    for r in &d.removed {
        out.push_str(&format!("  - {}\n", printable(r)));
    }
    out
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

impl StatusArgs {
    /// Each environment's owner, protection, states with their version and lock holder,
    /// pending and approved changes, open break-glass grants.
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let status = self.server.client()?.status().await?;
        match self.format {
            Format::Json => print_json(&status)?,
            Format::Human => print!("{}", status_text(&status)),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn status_text(envs: &[EnvironmentStatus]) -> String {
    let mut out = String::new();
    for e in envs {
        out.push_str(&format!(
            "{} (owner {}{})\n",
            printable(&e.environment),
            printable(&e.owner),
            if e.protected { ", protected" } else { "" }
        ));
        if let Some(why) = &e.unavailable {
            out.push_str(&format!("  !! UNAVAILABLE: {}\n", printable(why)));
        }
        for g in &e.breakglass {
            out.push_str(&format!(
                "  !! BREAK-GLASS {} open for {} until {}: {}\n",
                printable(&g.id),
                printable(&g.principal),
                printable(&g.expires_at),
                printable(&g.reason)
            ));
        }
        if !e.pending_changes.is_empty() {
            out.push_str(&format!(
                "  changes waiting for approval: {}\n",
                printable(&e.pending_changes.join(", "))
            ));
        }
        if !e.diverged_changes.is_empty() {
            out.push_str(&format!(
                "  !! DIVERGED: writes under {} went beyond the approved plan (`bulkhead change show ID` names the resources)\n",
                printable(&e.diverged_changes.join(", "))
            ));
        }
        if !e.approved_changes.is_empty() {
            out.push_str(&format!(
                "  approved changes to apply: {}\n",
                printable(&e.approved_changes.join(", "))
            ));
        }
        for s in &e.states {
            let lock = match &s.lock {
                Some(l) => format!(
                    "  LOCKED by {} since {} ({})",
                    printable(&l.principal),
                    printable(&l.since),
                    printable(&l.operation)
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {:<24} v{:<4} {}{}\n",
                printable(&s.name),
                s.version,
                if s.deleted {
                    "deleted".to_string()
                } else {
                    format!(
                        "by {} at {}",
                        printable(&s.principal),
                        printable(&s.updated_at)
                    )
                },
                lock
            ));
        }
    }
    out
}
