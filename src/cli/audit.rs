//! `bulkhead audit log|verify`: read and check every audit chain (the server's and each
//! environment's), run on the server's host against its data directory.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{change_id, CliError, ConfigArg, Format};
use crate::audit::{self, checkpoint, verify, AuditKey, Record};
use crate::operations::audit_log::{self, AuditLog};
use crate::text::printable;
use crate::time::{Clock, Timestamp};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show audit records, oldest first, filtered.
    Log(Box<LogArgs>),
    /// Check every chain, read-only, under the audit key and against the checkpoints: edited,
    /// re-hashed, deleted, cut-off or swapped records, and changes, approvals, grants and state
    /// versions without the record that created them; exit 1 if any is broken.
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
    /// Only this principal: alice (as the config names it), user:alice or service:ci-prod.
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
    /// Read the log from a running server (`GET /v1/audit`, which needs audit:read) instead
    /// of the data directory on this host, e.g. https://bulkhead.example.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Your bulkhead token, with --server.
    #[arg(long, env = "BULKHEAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// A directory of checkpoints to check the chains against (default: the server's
    /// `checkpoint_dir`); repeat it for copies kept elsewhere, or other instances' directories.
    #[arg(long, value_name = "DIR")]
    checkpoints: Vec<PathBuf>,
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

/// A time argument: RFC 3339, or an age before now such as `1h`.
fn time_arg(name: &str, value: &Option<String>) -> Result<Option<String>, CliError> {
    let Some(v) = value.as_deref() else {
        return Ok(None);
    };
    let time = match crate::config::parse_duration(v) {
        Ok(age) => Clock::system().now().minus(age).ok_or_else(|| {
            CliError::Usage(format!(
                "--{name} {v}: that is before any time; use a shorter age"
            ))
        })?,
        Err(_) => Timestamp::parse(v).map_err(|_| {
            CliError::Usage(format!(
                "--{name} {v}: not RFC 3339 nor an age; write e.g. 2026-11-27T10:00:00Z or 1h"
            ))
        })?,
    };
    Ok(Some(time.stored()))
}

impl LogArgs {
    async fn run(self) -> Result<ExitCode, CliError> {
        if let Some(d) = &self.decision {
            if audit::Outcome::parse(d).is_none() {
                return Err(CliError::Usage(format!(
                    "--decision {d}: use allow, deny or error"
                )));
            }
        }
        if let Some(server) = self.server.clone() {
            return self.run_remote(&server).await;
        }
        let config = self.config.load()?;
        let principal = self
            .principal
            .as_deref()
            .map(|p| {
                crate::identity::Principal::as_recorded(&config, p)
                    .map_err(|why| CliError::Usage(format!("--principal {p}: {why}")))
            })
            .transpose()?;
        let mut filter = audit::Filter {
            state: self.state.clone(),
            principal,
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
            first: None,
        };
        let log = AuditLog::open(&config)
            .await
            .context("cannot open the audit log")?;
        if let Some(env) = &self.env {
            log.knows(env)
                .map_err(|why| CliError::Usage(format!("--env {env}: {why}")))?;
        }
        // The newest position read in each chain.
        let mut read: HashMap<String, i64> = HashMap::new();
        loop {
            let records = log
                .next(self.env.as_deref(), &mut read, &filter)
                .await
                .map_err(anyhow::Error::from)?;
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

    /// The log as a running server answers it, page by page.
    async fn run_remote(&self, server: &str) -> Result<ExitCode, CliError> {
        let token = self.token.as_deref().ok_or_else(|| {
            CliError::Usage("--server needs a token: pass --token or set BULKHEAD_TOKEN".into())
        })?;
        let client = crate::client::Client::new(server, token);
        let mut query: Vec<(&str, String)> = Vec::new();
        let mut put = |name, value: Option<String>| {
            if let Some(v) = value {
                query.push((name, v));
            }
        };
        put("env", self.env.clone());
        put("state", self.state.clone());
        put("principal", self.principal.clone());
        put("change", self.change.clone());
        put("action", self.action.clone());
        put("decision", self.decision.clone());
        put("since", time_arg("since", &self.since)?);
        put("until", time_arg("until", &self.until)?);
        put("last", self.last.map(|n| n.to_string()));
        if self.follow {
            return self.follow_remote(&client, query).await;
        }
        let mut after: Option<String> = None;
        loop {
            let mut asked = query.clone();
            asked.extend(after.take().map(|c| ("after", c)));
            let page = client.audit(&asked).await?;
            for r in &page.records {
                self.print(r)?;
            }
            if !page.more {
                return Ok(ExitCode::SUCCESS);
            }
            after = Some(page.cursor);
        }
    }

    /// Prints records as the server sends them, asking again from the last cursor whenever
    /// the server ends an answer (it does, every hour).
    async fn follow_remote(
        &self,
        client: &crate::client::Client,
        query: Vec<(&str, String)>,
    ) -> Result<ExitCode, CliError> {
        use crate::client::FollowedEvent;
        let mut cursor: Option<String> = None;
        loop {
            let mut asked = query.clone();
            if let Some(c) = &cursor {
                // Resuming: every record after the cursor, not the newest N again.
                asked.retain(|(name, _)| *name != "last");
                asked.push(("after", c.clone()));
            }
            let mut followed = client.audit_follow(&asked).await?;
            while let Some(event) = followed.next().await? {
                match event {
                    FollowedEvent::Record(r) => {
                        self.print(&r)?;
                        let _ = std::io::stdout().flush();
                    }
                    FollowedEvent::Cursor(c) => cursor = Some(c),
                    FollowedEvent::Refused(why) => {
                        return Err(CliError::Failed(anyhow::anyhow!(
                            "the server stopped following: {why}"
                        )))
                    }
                }
            }
        }
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

/// Where a request came from, as a log line ends: `  from 10.20.0.7 via 10.0.0.2
/// "Terraform/1.11.4" certificate CN=runner-prod,O=acme`.
fn from(r: &Record) -> String {
    if r.source.is_none() && r.user_agent.is_none() {
        return String::new();
    }
    let mut out = format!("  from {}", printable(r.source.as_deref().unwrap_or("-")));
    if let Some(proxy) = &r.peer {
        out.push_str(&format!(" via {}", printable(proxy)));
    }
    if let Some(agent) = &r.user_agent {
        out.push_str(&format!(" \"{}\"", printable(agent)));
    }
    if let Some(certificate) = &r.certificate {
        out.push_str(&format!(" certificate {}", printable(certificate)));
    }
    out
}

impl VerifyArgs {
    /// Verifies every chain's database, read-only, under the audit key, against the
    /// checkpoints; prints one line per chain, naming its first problem and what it means.
    async fn run(self) -> Result<ExitCode, CliError> {
        let config = self.config.load()?;
        let key = AuditKey::existing(&config.server.audit_key_file)
            .map_err(|e| CliError::Failed(e.into()))?;
        let dirs = if self.checkpoints.is_empty() {
            vec![config.server.checkpoint_dir.clone()]
        } else {
            self.checkpoints.clone()
        };
        let found =
            checkpoint::read(&dirs, &key.checkpoints()).context("cannot read the checkpoints")?;
        for dir in &found.missing {
            eprintln!(
                "note: {} holds no checkpoints: a cut tail, an emptied chain or an older copy of a database cannot be told from an intact one",
                dir.display()
            );
        }
        let mut broken = false;
        let mut unreadable = false;
        let mut report = Vec::new();
        for checked in audit_log::verify_all(&config, &key, &found).await {
            let chain = checked.chain;
            let checkpoints = found.chains.get(&chain).map_or(&[][..], Vec::as_slice);
            // A database that cannot be read is this chain's problem, not evidence of
            // tampering, and the other chains are still checked.
            let verified = match checked.report {
                Ok(report) => report,
                Err(e) => {
                    unreadable = true;
                    match self.format {
                        Format::Human => {
                            println!("{chain}: UNREADABLE: {e} (its chain could not be checked)")
                        }
                        Format::Json => report.push(serde_json::json!({
                            "chain": chain, "intact": false, "unreadable": true, "problem": e,
                        })),
                    }
                    continue;
                }
            };
            let mut outcome = verified.outcome;
            if let (Ok(()), Some(bad)) = (&outcome, found.bad.get(&chain).and_then(|b| b.first())) {
                outcome = Err(verify::Problem {
                    seq: None,
                    problem: bad.clone(),
                });
            }
            broken |= outcome.is_err();
            let unchecked = outcome.is_ok() && verified.records > 0 && checkpoints.is_empty();
            match self.format {
                Format::Human => match &outcome {
                    Ok(()) => println!(
                        "{chain}: {} records, chain intact{}",
                        verified.records,
                        if unchecked {
                            " (no checkpoint of it: a cut tail cannot be told)".to_string()
                        } else {
                            format!(", {} checkpoints match", verified.checkpoints)
                        }
                    ),
                    Err(p @ verify::Problem { seq: Some(_), .. }) => {
                        println!("{chain}: BROKEN at {p}")
                    }
                    Err(p) => println!("{chain}: BROKEN: {p}"),
                },
                Format::Json => report.push(match &outcome {
                    Ok(()) => serde_json::json!({
                        "chain": chain, "intact": true, "records": verified.records,
                        "checkpoints": verified.checkpoints,
                    }),
                    Err(p) => serde_json::json!({
                        "chain": chain, "intact": false, "seq": p.seq, "problem": p.problem,
                    }),
                }),
            }
        }
        if let Format::Json = self.format {
            println!("{}", serde_json::Value::Array(report));
        }
        if broken {
            eprintln!("The audit log has been tampered with: see the chains marked BROKEN.");
            Ok(ExitCode::from(1))
        } else if unreadable {
            eprintln!(
                "Some databases cannot be read, so their chains were not checked: see the chains marked UNREADABLE."
            );
            Ok(ExitCode::from(1))
        } else {
            Ok(ExitCode::SUCCESS)
        }
    }
}
