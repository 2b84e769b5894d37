//! `bulkhead state history|show|diff|rollback` and `bulkhead status`: who changed what, and how
//! to undo it. Clients of a running server.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::change::ServerArgs;
use super::{print_json, CliError, Format};
use crate::history::{Diff, EnvironmentStatus, HistoryEntry};

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
}

#[derive(Debug, Args)]
pub struct AddressArgs {
    /// ENVIRONMENT/NAME, e.g. prod/network.
    address: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
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

fn check_address(address: &str) -> Result<(), CliError> {
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
                let answer = args
                    .server
                    .client()?
                    .rollback(&args.address, args.to, args.change.as_deref())
                    .await?;
                println!(
                    "{} rolled back to version {}: now version {} (serial {})",
                    args.address, args.to, answer["version"], answer["serial"]
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    }
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
            "{:>4}  {:<27}  {:<22}  {:<10}  {:>6}  {:>9}  {:<12}  {what}{}\n",
            m.version,
            m.created_at,
            m.principal,
            e.change.as_deref().unwrap_or("-"),
            m.serial.map_or("-".to_string(), |s| s.to_string()),
            m.size,
            m.operation.as_deref().unwrap_or("-"),
            if m.forced { " (forced)" } else { "" }
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
        out.push_str(&format!("  + {a}\n"));
    }
    for c in &d.changed {
        out.push_str(&format!("  ~ {}\n", c.address));
        for attr in &c.attributes {
            out.push_str(&format!(
                "      {}: {} -> {}\n",
                attr.name,
                attr.before.as_deref().unwrap_or("(none)"),
                attr.after.as_deref().unwrap_or("(none)")
            ));
        }
    }
    for r in &d.removed {
        out.push_str(&format!("  - {r}\n"));
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
            e.environment,
            e.owner,
            if e.protected { ", protected" } else { "" }
        ));
        for g in &e.breakglass {
            out.push_str(&format!(
                "  !! BREAK-GLASS {} open for {} until {}: {}\n",
                g.id, g.principal, g.expires_at, g.reason
            ));
        }
        if !e.pending_changes.is_empty() {
            out.push_str(&format!(
                "  changes waiting for approval: {}\n",
                e.pending_changes.join(", ")
            ));
        }
        if !e.approved_changes.is_empty() {
            out.push_str(&format!(
                "  approved changes to apply: {}\n",
                e.approved_changes.join(", ")
            ));
        }
        for s in &e.states {
            let lock = match &s.lock {
                Some(l) => format!(
                    "  LOCKED by {} since {} ({})",
                    l.principal, l.since, l.operation
                ),
                None => String::new(),
            };
            out.push_str(&format!(
                "  {:<24} v{:<4} {}{}\n",
                s.name,
                s.version,
                if s.deleted {
                    "deleted".to_string()
                } else {
                    format!("by {} at {}", s.principal, s.updated_at)
                },
                lock
            ));
        }
    }
    out
}
