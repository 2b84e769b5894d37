//! `bulkhead change create|update|attest|list|show|approve|reject|cancel` and `bulkhead
//! breakglass open|close`: clients of a running server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{change_id, print_json, read_plan, CliError, Format};
use crate::changes::{Change, Listing};
use crate::client::{Client, ClientError, NewChange};
use crate::text::printable;

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server's address.
    #[arg(long, env = "BULKHEAD_ADDR", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Your bulkhead token (or a CI provider's OIDC token, for a pipeline).
    #[arg(long, env = "BULKHEAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    pub(super) fn client(&self) -> Result<Client, CliError> {
        let token = self.token.as_deref().ok_or_else(|| {
            CliError::Usage(
                "no token: pass --token or set BULKHEAD_TOKEN (see `bulkhead token create`)".into(),
            )
        })?;
        Ok(Client::new(&self.server, token))
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Failed(e.into())
    }
}

#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Propose a change to a protected environment; prints its id alone on stdout.
    ///
    /// The plan is the JSON of a saved plan:
    ///   terraform plan -out plan.tfplan && terraform show -json plan.tfplan > plan.json
    ///
    /// The change records the commit the plan was made from (--commit; by default
    /// `git rev-parse HEAD` when run in a repository; approvers see it as claimed) and a
    /// fingerprint of the plan's effect. Once approved, the pipeline applies it with
    /// `?change=<id>` on the backend address.
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    /// Replace a change's plan (its author only); its approvals are dismissed.
    ///
    /// The new plan is the change's next revision. The approvals given to the plan before,
    /// and a pipeline's attestation of it, are dismissed: it must be approved again.
    ///
    /// Example:
    ///   bulkhead change update prod-7 --plan plan.json
    #[command(verbatim_doc_comment)]
    Update(UpdateArgs),
    /// As the pipeline: attest that the saved plan you will apply is the approved one.
    ///
    /// The server compares the effect of your plan with the change's approved plan and names
    /// the resources that differ; exit 1 when they do. Where the environment has
    /// `pipeline { bind = "plan" }`, the change's lock is refused until the identity taking it
    /// has attested.
    ///
    /// Example:
    ///   terraform plan -out tfplan && terraform show -json tfplan > plan.json
    ///   bulkhead change attest prod-7 --plan plan.json && terraform apply tfplan
    #[command(verbatim_doc_comment)]
    Attest(AttestArgs),
    /// List changes (and open break-glass grants) of the environments you may read.
    List(ListArgs),
    /// Show a change as a reviewer reads it; exit 1 when it diverged from its plan.
    ///
    /// What it adds, changes and destroys, the commit it claims, its attestation, and the
    /// resources that writes under it touched beyond its plan, if any.
    Show(IdArgs),
    /// Approve a change (approvers only; never your own).
    Approve(IdArgs),
    /// Reject a change.
    Reject(ReasonArgs),
    /// Withdraw a change (its author, or an approver).
    Cancel(ReasonArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The protected environment.
    #[arg(long)]
    env: String,
    /// The state the plan was made against (the NAME of /v1/state/ENV/NAME).
    #[arg(long)]
    state: String,
    /// The plan JSON (`terraform show -json plan.tfplan`); `-` reads standard input.
    #[arg(long)]
    plan: PathBuf,
    #[arg(long)]
    title: Option<String>,
    /// The branch the change comes from.
    #[arg(long)]
    branch: Option<String>,
    /// The commit the plan was made from (default: `git rev-parse HEAD`, when run in a
    /// repository).
    #[arg(long)]
    commit: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The change id, e.g. prod-12.
    id: String,
    /// The new plan JSON (`terraform show -json plan.tfplan`); `-` reads standard input.
    #[arg(long)]
    plan: PathBuf,
    /// The commit the new plan was made from (default: `git rev-parse HEAD`, when run in a
    /// repository; else the change keeps the commit it named).
    #[arg(long)]
    commit: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct AttestArgs {
    /// The change id, e.g. prod-12.
    id: String,
    /// The JSON of the saved plan about to be applied (`terraform show -json tfplan`); `-`
    /// reads standard input.
    #[arg(long)]
    plan: PathBuf,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    env: Option<String>,
    /// open, applied, rejected or cancelled.
    #[arg(long)]
    status: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The change id, e.g. prod-12.
    id: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// The change id, e.g. prod-12.
    id: String,
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

impl ChangeCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            ChangeCommand::Create(args) => {
                let plan = read_plan(&args.plan, MAKE_PLAN)?;
                let commit = args.commit.clone().or_else(head_commit);
                let new = NewChange {
                    environment: &args.env,
                    state: &args.state,
                    title: args.title.as_deref(),
                    branch: args.branch.as_deref(),
                    commit: commit.as_deref(),
                };
                let change = args.server.client()?.create_change(&new, plan).await?;
                let id = printable(&change.id);
                println!("{id}");
                let (add, chg, destroy) = change.summary.counts();
                eprintln!(
                    "Change {id} proposed: {add} to add, {chg} to change, {destroy} to destroy. It needs {} approval(s): bulkhead change approve {id}",
                    change.required
                );
                Ok(ExitCode::SUCCESS)
            }
            ChangeCommand::Update(args) => {
                let id = change_id(&args.id)?;
                let plan = read_plan(&args.plan, MAKE_PLAN)?;
                let commit = args.commit.clone().or_else(head_commit);
                let client = args.server.client()?;
                let change = client.replan(id, plan, commit.as_deref()).await?;
                match args.format {
                    Format::Json => print_json(&change)?,
                    Format::Human => {
                        let (add, chg, destroy) = change.summary.counts();
                        println!(
                            "{}: plan replaced (revision {}): {add} to add, {chg} to change, {destroy} to destroy. Approvals given before are dismissed: it needs {} approval(s) again.",
                            printable(&change.id),
                            change.revision,
                            change.required
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ChangeCommand::Attest(args) => {
                let id = change_id(&args.id)?;
                let plan = read_plan(&args.plan, MAKE_PLAN)?;
                let change = args.server.client()?.attest(id, plan).await?;
                match args.format {
                    Format::Json => print_json(&change)?,
                    Format::Human => println!(
                        "{}: the plan does what revision {} approved{}: apply that saved plan (`terraform apply tfplan`) with these same credentials.",
                        printable(&change.id),
                        change.revision,
                        change
                            .attestation
                            .as_ref()
                            .map(|a| format!(", attested by {}", printable(&a.describe())))
                            .unwrap_or_default()
                    ),
                }
                Ok(ExitCode::SUCCESS)
            }
            ChangeCommand::List(args) => {
                let listing = args
                    .server
                    .client()?
                    .changes(args.env.as_deref(), args.status.as_deref())
                    .await?;
                match args.format {
                    Format::Json => print_json(&listing)?,
                    Format::Human => print_listing(&listing),
                }
                Ok(ExitCode::SUCCESS)
            }
            ChangeCommand::Show(args) => {
                let change = args.server.client()?.change(change_id(&args.id)?).await?;
                match args.format {
                    Format::Json => print_json(&change)?,
                    Format::Human => print!("{}", review(&change)),
                }
                // A change applied beyond its plan fails a CI step that shows it.
                Ok(if change.diverged.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
            ChangeCommand::Approve(args) => {
                let id = change_id(&args.id)?;
                let change = args.server.client()?.decide(id, "approve", None).await?;
                match args.format {
                    Format::Json => print_json(&change)?,
                    Format::Human => println!(
                        "{}: {}",
                        printable(&change.id),
                        printable(&readiness_line(&change))
                    ),
                }
                Ok(ExitCode::SUCCESS)
            }
            ChangeCommand::Reject(args) => decide(args, "reject").await,
            ChangeCommand::Cancel(args) => decide(args, "cancel").await,
        }
    }
}

async fn decide(args: ReasonArgs, verb: &str) -> Result<ExitCode, CliError> {
    let id = change_id(&args.id)?;
    let change = args
        .server
        .client()?
        .decide(id, verb, args.reason.as_deref())
        .await?;
    println!("{}: {}", printable(&change.id), change.status.as_str());
    Ok(ExitCode::SUCCESS)
}

/// How a change's plan is made, for a plan that cannot be read.
const MAKE_PLAN: &str =
    "terraform plan -out plan.tfplan && terraform show -json plan.tfplan > plan.json";

/// The commit checked out where the command runs, when it runs in a git repository.
fn head_commit() -> Option<String> {
    let sha = super::review::git(&["rev-parse", "--verify", "--quiet", "HEAD"]).ok()?;
    let sha = sha.trim();
    (!sha.is_empty()).then(|| sha.to_string())
}

fn readiness_line(c: &Change) -> String {
    let valid = c.approvals.len();
    match c.readiness.as_str() {
        "approved" => format!("approved ({valid} of {} approvals)", c.required),
        "pending" => format!("waiting for approval ({} required)", c.required),
        "expired" => "approvals expired: ask for a fresh approval".to_string(),
        other => other.to_string(),
    }
}

fn print_listing(listing: &Listing) {
    for bg in &listing.breakglass {
        println!(
            "!! BREAK-GLASS OPEN {} in {} by {} until {}: {}",
            printable(&bg.id),
            printable(&bg.environment),
            printable(&bg.principal),
            printable(&bg.expires_at),
            printable(&bg.reason)
        );
    }
    println!(
        "{:<14} {:<10} {:<12} {:<20} {:<22} TITLE",
        "ID", "STATUS", "STATE", "AUTHOR", "PLAN (+/~/-)"
    );
    for c in &listing.changes {
        let (add, chg, destroy) = c.summary.counts();
        println!(
            "{:<14} {:<10} {:<12} {:<20} {:<22} {}",
            printable(&c.id),
            if c.diverged.is_empty() {
                printable(&c.readiness).into_owned()
            } else {
                format!("{}!DIVERGED", printable(&c.readiness))
            },
            printable(&c.state),
            printable(&c.author),
            format!("{add}/{chg}/{destroy}"),
            printable(&c.title)
        );
    }
}

/// A change as a reviewer wants to read it; destruction stands out. Every text of the
/// change is escaped: a plan's addresses and title are its author's to choose.
pub fn review(c: &Change) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let p = |s: &str| printable(s).into_owned();
    let title = if c.title.is_empty() {
        "(no title)".to_string()
    } else {
        p(&c.title)
    };
    line(format!("Change {}: {title}", p(&c.id)));
    line(format!(
        "  environment  {}  (state {})",
        p(&c.environment),
        p(&c.state)
    ));
    line(format!(
        "  author       {}  at {}",
        p(&c.author),
        p(&c.created_at)
    ));
    if c.branch.is_some() || c.commit.is_some() {
        line(format!(
            "  source       branch {}  commit {}  (as the author claims; not verified)",
            p(c.branch.as_deref().unwrap_or("-")),
            p(c.commit.as_deref().unwrap_or("-"))
        ));
    }
    line(format!(
        "  plan sha256  {}  (revision {})",
        p(&c.plan_sha256),
        c.revision
    ));
    line(format!("  status       {}", p(&readiness_line(c))));
    if let Some(a) = &c.attestation {
        line(format!(
            "  attested by  {} at {}: the plan it applies does what this one does",
            p(&a.describe()),
            p(&a.at)
        ));
    }
    for a in &c.approvals {
        line(format!(
            "  approved by  {} at {} (valid until {})",
            p(&a.approver),
            p(&a.approved_at),
            p(&a.expires_at)
        ));
    }
    let (add, chg, destroy) = c.summary.counts();
    line(String::new());
    line(format!(
        "Plan: {add} to add, {chg} to change, {destroy} to destroy."
    ));
    for a in &c.summary.add {
        line(format!("  + {}", p(a)));
    }
    for a in &c.summary.change {
        line(format!("  ~ {}", p(a)));
    }
    for a in &c.summary.replace {
        line(format!("  -/+ {}   (DESTROYED, then created again)", p(a)));
    }
    for a in &c.summary.destroy {
        line(format!("  - {}   (DESTROYED)", p(a)));
    }
    if !c.diverged.is_empty() {
        line(String::new());
        line(format!(
            "!! DIVERGED: writes under this change touched {} resource(s) beyond its approved plan: {}",
            c.diverged.len(),
            p(&c.diverged.join(", "))
        ));
        line("   They are stored (the state is what exists); `bulkhead state history` shows the versions, the audit log the writes.".to_string());
    }
    if c.summary.destroys_anything() {
        line(String::new());
        line(format!(
            "!! WARNING: this change DESTROYS {} resource(s). Read the list above before approving.",
            c.summary.destroy.len() + c.summary.replace.len()
        ));
    }
    out
}

#[derive(Debug, Subcommand)]
pub enum BreakglassCommand {
    /// Take time-boxed write access to an environment without a change request, for an
    /// emergency. A reason is mandatory; everything done under it is marked in the audit log.
    /// Prints the grant's id alone on stdout.
    Open(OpenArgs),
    /// End a break-glass grant before it expires.
    Close(CloseArgs),
}

#[derive(Debug, Args)]
pub struct OpenArgs {
    #[arg(long)]
    env: String,
    /// What is broken, and why the change process cannot wait.
    #[arg(long)]
    reason: String,
    /// How long, e.g. 30m or 1h (at most the environment's max_ttl; default: that maximum).
    #[arg(long)]
    ttl: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct CloseArgs {
    /// The grant's id, e.g. prod-bg3.
    id: String,
    #[command(flatten)]
    server: ServerArgs,
}

impl BreakglassCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            BreakglassCommand::Open(args) => {
                let grant = args
                    .server
                    .client()?
                    .open_breakglass(&args.env, &args.reason, args.ttl.as_deref())
                    .await?;
                let id = printable(&grant.id);
                println!("{id}");
                eprintln!(
                    "BREAK-GLASS {id} is open: {} may write {} until {}. Every action is recorded as break-glass. Close it when done: bulkhead breakglass close {id}",
                    printable(&grant.principal),
                    printable(&grant.environment),
                    printable(&grant.expires_at)
                );
                Ok(ExitCode::SUCCESS)
            }
            BreakglassCommand::Close(args) => {
                args.server.client()?.close_breakglass(&args.id).await?;
                eprintln!("Break-glass {} closed.", printable(&args.id));
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::{PlanSummary, Status};

    #[test]
    fn destruction_stands_out_in_a_review() {
        let change = Change {
            id: "prod-7".into(),
            environment: "prod".into(),
            state: "network".into(),
            title: "shrink".into(),
            author: "user:alice".into(),
            created_at: "2026-11-27T10:00:00Z".into(),
            plan_sha256: "ab".into(),
            summary: PlanSummary {
                terraform_version: None,
                add: vec!["aws_subnet.b".into()],
                change: vec![],
                replace: vec!["aws_vpc.main".into()],
                destroy: vec!["aws_subnet.a".into()],
                state_only: vec![],
            },
            branch: None,
            commit: None,
            status: Status::Open,
            approvals: vec![],
            required: 1,
            readiness: "pending".into(),
            closed_at: None,
            closed_by: None,
            reason: None,
            applied_version: None,
            revision: 1,
            fingerprint: None,
            attestation: None,
            diverged: Vec::new(),
        };
        let text = review(&change);
        assert!(
            text.contains("Plan: 2 to add, 0 to change, 2 to destroy."),
            "{text}"
        );
        assert!(text.contains("  - aws_subnet.a   (DESTROYED)"), "{text}");
        assert!(
            text.contains("-/+ aws_vpc.main   (DESTROYED, then created again)"),
            "{text}"
        );
        assert!(
            text.contains("!! WARNING: this change DESTROYS 2 resource(s)"),
            "{text}"
        );

        let mut crafted = change;
        crafted.title = "ok\u{1b}]0;x\u{7}".into();
        crafted.summary.destroy = vec!["aws_db.a\u{1b}[2J\u{1b}[H\u{202e}".into()];
        let text = review(&crafted);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "{text}"
        );
        assert!(text.contains("Change prod-7: ok\\x1b]0;x\\x07"), "{text}");
        assert!(
            text.contains("  - aws_db.a\\x1b[2J\\x1b[H\\u{202e}   (DESTROYED)"),
            "{text}"
        );
    }
}
