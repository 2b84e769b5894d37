//! `bulkhead drift report|status|show|ack`: keeping state accurate. Clients of a running
//! server: the pipeline posts its refresh-only plans, CI fails while anything is open, and
//! owners acknowledge what they have looked at.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::change::ServerArgs;
use super::state::{check_address, AddressArgs};
use super::{print_json, read_plan, CliError, Format};
use crate::operations::drift::{
    Acknowledgement, DriftState, DriftStatus, SignalRow, StateDrift, StateHealth,
};
use crate::text::printable;

#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Post what a refresh-only plan found, as the pipeline that writes the environment.
    ///
    /// Run on a schedule, with the pipeline's credentials:
    ///   terraform plan -refresh-only -out drift.tfplan
    ///   terraform show -json drift.tfplan > drift.json
    ///   bulkhead drift report prod/network --plan drift.json
    ///
    /// bulkhead keeps which resources drifted and how (sensitive values masked), since when,
    /// and when the state was last reported clean; owners are told of new drift.
    #[command(verbatim_doc_comment)]
    Report(ReportArgs),
    /// The states with open signals or drift, oldest first; exit 1 while anything is open.
    ///
    /// A signal is something the backend saw on a write or a lock's release (a write outside
    /// any change, a lineage change, a serial jump, state surgery, drift accepted by a
    /// refresh-only apply, tainted instances, failed checks, a toolchain change, a long or
    /// empty lock). Warnings stay open until acknowledged (`bulkhead drift ack`); notices are
    /// only recorded (`bulkhead drift show`).
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),
    /// One state's signals (open or not), its drift, and its newest report.
    Show(AddressArgs),
    /// Acknowledge a signal, or the drift now reported, with a reason (recorded): it is no
    /// longer open. The owner's and the approvers' right.
    ///
    /// Examples:
    ///   bulkhead drift ack prod/network --signal 4 --reason "state mv during the VPC split, planned"
    ///   bulkhead drift ack prod/network --drift --reason "tag edited in the console; INFRA-212 puts it in code"
    #[command(verbatim_doc_comment)]
    Ack(AckArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// ENVIRONMENT/NAME, e.g. prod/network.
    address: String,
    /// The JSON of the refresh-only plan (`terraform show -json drift.tfplan`); `-` reads
    /// standard input.
    #[arg(long)]
    plan: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this environment.
    #[arg(long)]
    env: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["signal", "drift"])))]
pub struct AckArgs {
    /// ENVIRONMENT/NAME, e.g. prod/network.
    address: String,
    /// The signal's number, as `drift status` and `drift show` list it.
    #[arg(long)]
    signal: Option<i64>,
    /// The drift now reported (every resource of the newest report).
    #[arg(long)]
    drift: bool,
    /// Why it is known and fine: recorded in the audit log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    server: ServerArgs,
}

impl DriftCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            DriftCommand::Report(args) => {
                check_address(&args.address)?;
                let plan = read_plan(
                    &args.plan,
                    "terraform plan -refresh-only -out drift.tfplan && terraform show -json drift.tfplan > drift.json",
                )?;
                let reported = args
                    .server
                    .client()?
                    .drift_report(&args.address, plan)
                    .await?;
                match args.format {
                    Format::Json => print_json(&reported)?,
                    Format::Human => {
                        println!(
                            "drift report {} for {}: {}",
                            reported.report.id,
                            printable(&args.address),
                            drift_text(&reported.drift)
                        );
                        for t in &reported.report.drifted {
                            println!(
                                "  {} {} (since {})",
                                printable(&t.drifted.address),
                                t.drifted.how,
                                printable(&t.since)
                            );
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            DriftCommand::Status(args) => {
                let status = args
                    .server
                    .client()?
                    .drift_status(args.env.as_deref())
                    .await?;
                match args.format {
                    Format::Json => print_json(&status)?,
                    Format::Human => print!("{}", status_text(&status)),
                }
                Ok(if status.open() {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                })
            }
            DriftCommand::Show(args) => {
                check_address(&args.address)?;
                let shown = args.server.client()?.drift_show(&args.address).await?;
                match args.format {
                    Format::Json => print_json(&shown)?,
                    Format::Human => print!("{}", show_text(&shown)),
                }
                Ok(ExitCode::SUCCESS)
            }
            DriftCommand::Ack(args) => {
                check_address(&args.address)?;
                if args.reason.trim().is_empty() {
                    return Err(CliError::Usage(
                        "--reason is empty: say why it is known and fine".into(),
                    ));
                }
                let ack = Acknowledgement {
                    signal: args.signal,
                    drift: args.drift,
                    reason: args.reason,
                };
                args.server
                    .client()?
                    .drift_acknowledge(&args.address, &ack)
                    .await?;
                match ack.signal {
                    Some(id) => {
                        println!("acknowledged signal {id} of {}", printable(&args.address))
                    }
                    None => println!("acknowledged the drift of {}", printable(&args.address)),
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// A state's drift in a few words.
fn drift_text(d: &DriftState) -> String {
    if d.count == 0 {
        return format!("no drift (reported {})", printable(&d.reported_at));
    }
    let mut text = format!(
        "{} resource{} drifted since {}",
        d.count,
        if d.count == 1 { "" } else { "s" },
        printable(d.drifted_since.as_deref().unwrap_or("?"))
    );
    match &d.clean_at {
        Some(at) => text.push_str(&format!(", last clean {}", printable(at))),
        None => text.push_str(", never reported clean"),
    }
    if let (Some(by), Some(reason)) = (&d.acknowledged_by, &d.reason) {
        text.push_str(&format!(
            "; acknowledged by {}: {}",
            printable(by),
            printable(reason)
        ));
    }
    text
}

fn signal_line(s: &SignalRow) -> String {
    let state = if s.is_open() {
        "OPEN".to_string()
    } else if let Some(by) = &s.acknowledged_by {
        format!(
            "acknowledged by {}: {}",
            printable(by),
            printable(s.reason.as_deref().unwrap_or(""))
        )
    } else if let Some(v) = s.resolved_by {
        format!("resolved by version {v}")
    } else {
        s.severity.clone()
    };
    format!(
        "signal {} {} [{}] {}{}: {}",
        s.id,
        printable(&s.created_at),
        state,
        printable(&s.kind),
        s.version
            .map(|v| format!(" (version {v}, {})", printable(&s.principal)))
            .unwrap_or_else(|| format!(" ({})", printable(&s.principal))),
        printable(&s.evidence)
    )
}

fn status_text(status: &DriftStatus) -> String {
    let mut out = String::new();
    for s in &status.states {
        out.push_str(&health_text(s));
    }
    if status.states.is_empty() {
        out.push_str("no signals and no drift reports\n");
    }
    out.push('\n');
    for e in &status.environments {
        out.push_str(&format!(
            "{}{}: {}\n",
            printable(&e.environment),
            if e.protected { " (protected)" } else { "" },
            match (&e.unavailable, &e.reported_at) {
                (Some(why), _) => format!("UNAVAILABLE: {}", printable(why)),
                (None, Some(at)) => format!("last drift report {}", printable(at)),
                (None, None) =>
                    "never reported on: schedule `bulkhead drift report` in its pipeline".into(),
            }
        ));
    }
    let open = status.states.iter().filter(|s| s.open).count();
    if open > 0 {
        out.push_str(&format!(
            "\n{open} state{} need{} a look: `bulkhead drift show ENV/NAME`, then fix it or `bulkhead drift ack`\n",
            if open == 1 { "" } else { "s" },
            if open == 1 { "s" } else { "" }
        ));
    }
    out
}

fn health_text(s: &StateHealth) -> String {
    let mut out = format!(
        "{}/{}  {}{}\n",
        printable(&s.environment),
        printable(&s.state),
        if s.open { "OPEN" } else { "ok" },
        s.since
            .as_deref()
            .map(|at| format!(" since {}", printable(at)))
            .unwrap_or_default()
    );
    for signal in &s.signals {
        out.push_str(&format!("  {}\n", signal_line(signal)));
    }
    if let Some(d) = &s.drift {
        out.push_str(&format!("  drift: {}\n", drift_text(d)));
    }
    if let Some(h) = &s.held_long {
        out.push_str(&format!(
            "  lock {} held since {} by {} for {}: more than an hour; if its client is gone, `bulkhead state unlock {}/{} --id {}`\n",
            printable(&h.lock_id),
            printable(&h.since),
            printable(&h.holder),
            printable(&h.operation),
            printable(&s.environment),
            printable(&s.state),
            printable(&h.lock_id)
        ));
    }
    out
}

fn show_text(s: &StateDrift) -> String {
    let mut out = format!(
        "{}/{}: {}\n",
        printable(&s.environment),
        printable(&s.state),
        if s.open { "OPEN" } else { "nothing open" }
    );
    out.push_str("\nsignals:\n");
    if s.signals.is_empty() {
        out.push_str("  none\n");
    }
    for signal in &s.signals {
        out.push_str(&format!("  {}\n", signal_line(signal)));
    }
    out.push_str("\ndrift:\n");
    match (&s.drift, &s.report) {
        (Some(d), Some(r)) => {
            out.push_str(&format!("  {}\n", drift_text(d)));
            out.push_str(&format!(
                "  report {} by {} at {}{}\n",
                r.id,
                printable(&r.principal),
                printable(&r.created_at),
                r.terraform_version
                    .as_deref()
                    .map(|v| format!(" (terraform {})", printable(v)))
                    .unwrap_or_default()
            ));
            for t in &r.drifted {
                out.push_str(&format!(
                    "  {} {} (since {})\n",
                    printable(&t.drifted.address),
                    t.drifted.how,
                    printable(&t.since)
                ));
                for a in &t.drifted.attributes {
                    out.push_str(&format!(
                        "      {}: {} -> {}\n",
                        printable(&a.name),
                        printable(a.before.as_deref().unwrap_or("null")),
                        printable(a.after.as_deref().unwrap_or("null"))
                    ));
                }
            }
            if (r.count as usize) > r.drifted.len() {
                out.push_str(&format!(
                    "  ... and {} more\n",
                    r.count as usize - r.drifted.len()
                ));
            }
        }
        _ => out.push_str("  never reported: schedule `bulkhead drift report` in the pipeline\n"),
    }
    for e in &s.earlier {
        out.push_str(&format!(
            "  earlier report {} by {} at {}: {} drifted\n",
            e.id,
            printable(&e.principal),
            printable(&e.created_at),
            e.count
        ));
    }
    out
}
