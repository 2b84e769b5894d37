//! `bulkhead token create|list|revoke`: local administration of API tokens, run on the
//! server's host against its data directory.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{local_operator, print_json, CliError, ConfigArg, Format};
use crate::audit::{Outcome, Record};
use crate::identity::{token, Principal};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a user or service; prints the token alone on stdout, once.
    ///
    /// Only its hash is stored. Terraform sends it as the backend password:
    /// TF_HTTP_USERNAME=alice TF_HTTP_PASSWORD=<token> terraform init
    Create(CreateArgs),
    /// List tokens (ids and owners; the secrets are not stored).
    List(ListArgs),
    /// Revoke a token by its id (see `token list`).
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The principal: NAME, user:NAME or service:NAME, as declared in the config.
    principal: String,
    #[command(flatten)]
    config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token id, as `token list` shows it.
    id: String,
    #[command(flatten)]
    config: ConfigArg,
}

impl TokenCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        match self {
            TokenCommand::Create(args) => {
                let config = args.config.load()?;
                let principal = Principal::lookup(&config, &args.principal).ok_or_else(|| {
                    CliError::Usage(format!(
                        "`{}` is not a user or service in {}: declare it there first",
                        args.principal,
                        config.path.display()
                    ))
                })?;
                let issued = token::create(&config, &principal, record("token:create", None))
                    .await
                    .context("cannot store the token")?;
                println!("{}", issued.token);
                eprintln!(
                    "Token {} issued for {principal}. It is shown only this once.",
                    issued.id
                );
                Ok(ExitCode::SUCCESS)
            }
            TokenCommand::List(args) => {
                let config = args.config.load()?;
                let tokens = token::list(&config).await.context("cannot read tokens")?;
                match args.format {
                    Format::Json => print_json(&tokens)?,
                    Format::Human => {
                        println!(
                            "{:<16}  {:<24}  {:<27}  REVOKED",
                            "ID", "PRINCIPAL", "CREATED"
                        );
                        for t in tokens {
                            println!(
                                "{:<16}  {:<24}  {:<27}  {}",
                                t.id,
                                t.principal,
                                t.created_at,
                                t.revoked_at.as_deref().unwrap_or("-")
                            );
                        }
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            TokenCommand::Revoke(args) => {
                let config = args.config.load()?;
                let record = record("token:revoke", Some(format!("token {}", args.id)));
                if !token::revoke(&config, &args.id, &record)
                    .await
                    .context("cannot revoke the token")?
                {
                    return Err(CliError::Failed(anyhow::anyhow!(
                        "no live token has id `{}`: see `bulkhead token list`",
                        args.id
                    )));
                }
                eprintln!("Token {} revoked.", args.id);
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

fn record(action: &str, reason: Option<String>) -> Record {
    let mut record = Record::new(action);
    record.principal = Some(local_operator());
    record.decision = Outcome::Allow;
    record.reason = reason;
    record
}
