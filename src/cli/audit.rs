//! `bulkhead audit log|verify`: read and check every audit chain (the server's and each
//! environment's), run on the server's host against its data directory.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{change_id, CliError, ConfigArg, Format};
use crate::audit::{self, Record};
use crate::store::Stores;
use crate::text::printable;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show audit records, oldest first, filtered.
    Log(LogArgs),
    /// Check every chain for edited, deleted, reordered or cut-off records; exit 1 if any is broken.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this environment (`server` for requests outside any environment).
    #[arg(long)]
    env: Option<String>,
    /// Only this state (its name within the environment).
    #[arg(long)]
    state: Option<String>,
    /// Only records naming this change request, e.g. prod-12.
    #[arg(long)]
    change: Option<String>,
    /// Only this principal, e.g. user:alice.
    #[arg(long)]
    principal: Option<String>,
    /// Only this action, e.g. state:write.
    #[arg(long)]
    action: Option<String>,
    /// Only this decision: allow, deny or error.
    #[arg(long)]
    decision: Option<String>,
    /// Only records at or after this time: RFC 3339 (2026-11-27T10:00:00Z) or an age (1h, 30m, 2d).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time: RFC 3339 or an age.
    #[arg(long)]
    until: Option<String>,
    /// Only the newest N matching records (of each chain, then of all together).
    #[arg(long, value_name = "N")]
    last: Option<u32>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Keep printing new records as they are written (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl AuditCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            AuditCommand::Log(args) => args.run().await,
            AuditCommand::Verify(args) => args.run().await,
        }
    }
}

async fn open(config: &ConfigArg) -> Result<Stores, CliError> {
    Ok(Stores::open(&config.load()?).await?)
}

/// A time argument: RFC 3339, or an age before now such as `1h`.
fn time_arg(name: &str, value: &Option<String>) -> Result<Option<String>, CliError> {
    let Some(v) = value.as_deref() else {
        return Ok(None);
    };
    let age = crate::config::parse_duration(v)
        .ok()
        .and_then(|d| chrono::Duration::from_std(d).ok());
    let time = match age {
        Some(age) => chrono::Utc::now() - age,
        None => chrono::DateTime::parse_from_rfc3339(v)
            .map_err(|e| {
                CliError::Usage(format!(
                    "--{name} {v}: {e}; write e.g. 2026-11-27T10:00:00Z or 1h"
                ))
            })?
            .with_timezone(&chrono::Utc),
    };
    Ok(Some(
        time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    ))
}

impl LogArgs {
    async fn run(self) -> Result<ExitCode, CliError> {
        if let Some(d) = &self.decision {
            if !["allow", "deny", "error"].contains(&d.as_str()) {
                return Err(CliError::Usage(format!(
                    "--decision {d}: use allow, deny or error"
                )));
            }
        }
        let mut filter = audit::Filter {
            state: self.state.clone(),
            principal: self.principal.clone(),
            change: self
                .change
                .as_deref()
                .map(change_id)
                .transpose()?
                .map(str::to_string),
            action: self.action.clone(),
            decision: self.decision.clone(),
            since: time_arg("since", &self.since)?,
            until: time_arg("until", &self.until)?,
            after: 0,
            through: None,
            last: self.last.map(i64::from),
        };
        let stores = open(&self.config).await?;
        if let Some(env) = &self.env {
            if !stores.chains().iter().any(|(chain, _)| chain == env) {
                return Err(CliError::Usage(format!(
                    "--env {env}: no such environment in the config (`server` names the server's own chain)"
                )));
            }
        }
        // The newest position read in each chain.
        let mut read: HashMap<String, i64> = HashMap::new();
        loop {
            let records = self.next(&stores, &mut read, &filter).await?;
            for r in &records {
                self.print(r)?;
            }
            if !self.follow {
                return Ok(ExitCode::SUCCESS);
            }
            // Following: after the first look back, every new record.
            filter.last = None;
            let _ = std::io::stdout().flush();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// The matching records after those already read, oldest first; with `filter.last`, only
    /// the newest that many.
    async fn next(
        &self,
        stores: &Stores,
        read: &mut HashMap<String, i64>,
        filter: &audit::Filter,
    ) -> Result<Vec<Record>, CliError> {
        let mut records = Vec::new();
        for (chain, db) in stores.chains() {
            if self.env.as_ref().is_some_and(|e| *e != chain) {
                continue;
            }
            // Up to the newest record now; the next look starts after it, matched or not.
            let newest = audit::newest_position(db.pool())
                .await
                .context("cannot read the audit log")?;
            let chain_filter = audit::Filter {
                after: read.get(&chain).copied().unwrap_or(0),
                through: Some(newest),
                ..filter.clone()
            };
            read.insert(chain.clone(), newest);
            let rows = audit::query(db.pool(), &chain_filter)
                .await
                .context("cannot read the audit log")?;
            for row in rows {
                let record: Record = serde_json::from_str(&row.record).with_context(|| {
                    format!(
                        "{chain}: audit record {} is not readable (run `bulkhead audit verify`)",
                        row.seq
                    )
                })?;
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.time.cmp(&b.time));
        if let Some(n) = filter.last {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            records.drain(..records.len().saturating_sub(n));
        }
        Ok(records)
    }

    fn print(&self, r: &Record) -> Result<(), CliError> {
        match self.format {
            Format::Json => println!(
                "{}",
                serde_json::to_string(r).context("cannot encode a record")?
            ),
            // Most of a record is the client's text: every field is shown escaped.
            Format::Human => println!(
                "{}  {:<8} {:<22} {:<20} {:<5} {:>3}  {}{}{}{}",
                printable(&r.time),
                printable(r.environment.as_deref().unwrap_or("-")),
                printable(r.principal.as_deref().unwrap_or("-")),
                printable(&r.action),
                r.decision.as_str(),
                r.status.map_or("-".to_string(), |s| s.to_string()),
                printable(r.state.as_deref().unwrap_or("")),
                r.version.map_or(String::new(), |v| format!(" v{v}")),
                r.reason
                    .as_deref()
                    .map_or(String::new(), |why| format!("  ({})", printable(why))),
                from(r),
            ),
        }
        Ok(())
    }
}

/// Where a request came from, as a log line ends: `  from 10.0.0.7 "Terraform/1.11.4"`.
fn from(r: &Record) -> String {
    match (&r.source, &r.user_agent) {
        (None, None) => String::new(),
        (source, agent) => format!(
            "  from {}{}",
            printable(source.as_deref().unwrap_or("-")),
            agent
                .as_deref()
                .map_or(String::new(), |a| format!(" \"{}\"", printable(a)))
        ),
    }
}

impl VerifyArgs {
    async fn run(self) -> Result<ExitCode, CliError> {
        let stores = open(&self.config).await?;
        let mut broken = false;
        let mut report = Vec::new();
        for (chain, db) in stores.chains() {
            let (rows, head) = audit::read_chain(db.pool())
                .await
                .context("cannot read the audit log")?;
            let found = audit::read_fields(db.pool())
                .await
                .context("cannot read the audit index")?;
            let result = audit::verify_chain(&rows, head)
                .and_then(|n| audit::verify_fields(&rows, &found).map(|()| n));
            broken |= result.is_err();
            match self.format {
                Format::Human => match &result {
                    Ok(n) => println!("{chain}: {n} records, chain intact"),
                    Err(b) => println!("{chain}: BROKEN at {b}"),
                },
                Format::Json => report.push(match &result {
                    Ok(n) => serde_json::json!({"chain": chain, "intact": true, "records": n}),
                    Err(b) => serde_json::json!({"chain": chain, "intact": false, "seq": b.seq, "problem": b.problem}),
                }),
            }
        }
        if let Format::Json = self.format {
            println!("{}", serde_json::Value::Array(report));
        }
        if broken {
            eprintln!("The audit log has been tampered with: see the chains marked BROKEN.");
            Ok(ExitCode::from(1))
        } else {
            Ok(ExitCode::SUCCESS)
        }
    }
}
