//! The command line: one enum per command group, one `run` per leaf. Commands return an exit
//! code; `main` prints errors and exits.
//!
//! Output for people passes every text that came from a request or a plan (titles, plan
//! addresses, reasons, user agents, lock operations, names from URLs) through
//! [`crate::text::printable`], so none can drive the terminal; `--format json` prints exact JSON.

mod audit;
mod backend;
mod change;
mod check;
mod drift;
mod policy;
mod review;
mod serve;
mod state;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};

#[derive(Debug, Parser)]
#[command(
    name = "bulkhead",
    version,
    about = "Privilege boundaries between infrastructure environments for Terraform and OpenTofu",
    long_about = "Privilege boundaries between infrastructure environments for Terraform and OpenTofu.\n\n\
        bulkhead serves Terraform's `http` state backend with one owner and one set of rules per \
        environment: developers write dev, read production and never write it; everything is \
        recorded in a tamper-evident audit log.\n\n\
        Start with `bulkhead serve --config examples/bulkhead.hcl`, then issue a token with \
        `bulkhead token create alice --config examples/bulkhead.hcl`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the state backend server.
    Serve(serve::ServeArgs),
    /// Issue, list and revoke API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Propose, review and approve changes to protected environments.
    #[command(subcommand)]
    Change(change::ChangeCommand),
    /// Emergency write access without a change request, time-boxed and loudly recorded.
    #[command(subcommand)]
    Breakglass(change::BreakglassCommand),
    /// History, content, differences and rollback of a state.
    #[command(subcommand)]
    State(state::StateCommand),
    /// Each environment's owner, states, locks, changes and break-glass grants.
    Status(state::StatusArgs),
    /// Check a config (and a Terraform repository) for missing boundaries; exit 1 on errors.
    Check(check::CheckArgs),
    /// Which environments a git diff touches and whose approval each still needs; exit 1 when
    /// one is missing.
    Review(review::ReviewArgs),
    /// Print a CODEOWNERS file from the environments' paths and owners.
    Codeowners(check::CodeownersArgs),
    /// Explain authorization decisions; print the Cedar schema.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Keep state accurate: signals the backend saw, and drift the pipeline reports.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
    /// Print the `backend "http"` block (or `terraform init` flags) for a state.
    ///
    /// Examples:
    ///   bulkhead backend dev/app > backend.tf
    ///   bulkhead backend prod/network --change prod-14 --format flags | xargs terraform init -reconfigure
    ///
    /// The credentials are not in it: terraform takes them from TF_HTTP_USERNAME (the
    /// principal) and TF_HTTP_PASSWORD (its token, from `bulkhead token create`, or the
    /// pipeline's OIDC token). With --change, every address carries `?change=ID`, which is how
    /// the pipeline names the approved change it applies. Nothing is sent to the server.
    #[command(verbatim_doc_comment)]
    Backend(backend::BackendArgs),
}

/// The config file option every command shares.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The bulkhead config file.
    #[arg(
        long,
        short = 'c',
        env = "BULKHEAD_CONFIG",
        default_value = "bulkhead.hcl"
    )]
    pub config: PathBuf,
}

impl ConfigArg {
    fn load(&self) -> Result<Config, CliError> {
        Config::load(&self.config).map_err(CliError::Config)
    }
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Human,
    /// JSON for scripts.
    Json,
}

/// Why a command failed, which decides its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Exit 2: the config cannot be used.
    #[error("{0}\nThe config is invalid: fix the lines above and run the command again.")]
    Config(ConfigError),
    /// Exit 2: the command was used wrongly.
    #[error("{0}")]
    Usage(String),
    /// Exit 1: the request or check failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl Cli {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Serve(args) => args.run().await,
            Command::Token(cmd) => cmd.run().await,
            Command::Audit(cmd) => cmd.run().await,
            Command::Policy(cmd) => cmd.run().await,
            Command::Change(cmd) => cmd.run().await,
            Command::Check(args) => args.run().await,
            Command::Codeowners(args) => args.run().await,
            Command::Backend(args) => args.run().await,
            Command::Review(args) => args.run().await,
            Command::State(cmd) => cmd.run().await,
            Command::Status(args) => args.run().await,
            Command::Breakglass(cmd) => cmd.run().await,
            Command::Drift(cmd) => cmd.run().await,
        }
    }
}

/// A change id in its one spelling, or a usage error that gives the right form.
fn change_id(text: &str) -> Result<&str, CliError> {
    crate::changes::ChangeId::parse(text)
        .map(|_| text)
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// A plan's JSON from the file `path`, or from standard input for `-`; a usage error naming
/// `make`, the commands that make one, when it cannot be read.
fn read_plan(path: &std::path::Path, make: &str) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let read = if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map(|_| bytes)
    } else {
        std::fs::read(path)
    };
    read.map_err(|e| {
        CliError::Usage(format!(
            "cannot read the plan {}: {e}; make it with `{make}`",
            path.display()
        ))
    })
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.into()))?;
    println!("{text}");
    Ok(())
}

/// Who runs a local admin command, as the audit log names them.
fn local_operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("local:{user}")
}
