//! `bulkhead policy explain|schema`: ask the compiled policies a question without a server.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, ConfigArg, Format};
use crate::identity::Principal;
use crate::policy::{refusal, Action, Policy, RequestContext, SCHEMA};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one request and say which policy decided it; exit 1 when it is denied.
    ///
    /// Example: bulkhead policy explain --principal alice --action state:write --env prod
    Explain(ExplainArgs),
    /// For every environment, which principals may do which action: the table a security
    /// review asks for, decided by the compiled policies (custom ones included).
    Matrix(MatrixArgs),
    /// Print the Cedar schema that custom policy files are validated against.
    Schema,
}

#[derive(Debug, Args)]
pub struct MatrixArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl MatrixArgs {
    async fn run(self) -> Result<ExitCode, CliError> {
        let config = self.config.load()?;
        let policy = Policy::compile(&config).map_err(|e| CliError::Usage(e.to_string()))?;
        let principals: Vec<Principal> = config
            .users
            .iter()
            .map(|u| Principal::User(u.clone()))
            .chain(
                config
                    .services
                    .keys()
                    .map(|s| Principal::Service(s.clone())),
            )
            .collect();
        let ctx = RequestContext {
            state: "",
            operation: "",
            source_ip: None,
        };
        let mut matrix = serde_json::Map::new();
        let mut text = String::new();
        for env in &config.environments {
            text.push_str(&format!(
                "{} (owner {}{})\n",
                env.name,
                env.owner,
                if env.protected() { ", protected" } else { "" }
            ));
            let mut rows = serde_json::Map::new();
            for action in Action::ALL {
                let who: Vec<String> = principals
                    .iter()
                    .filter(|p| policy.decide(p, action, &env.name, &ctx).allowed)
                    .map(ToString::to_string)
                    .collect();
                let shown = if who.is_empty() {
                    "-".to_string()
                } else {
                    who.join(", ")
                };
                text.push_str(&format!("  {:<20} {shown}\n", action.as_str()));
                rows.insert(action.as_str().into(), who.into());
            }
            matrix.insert(env.name.clone(), rows.into());
        }
        match self.format {
            Format::Json => super::print_json(&matrix)?,
            Format::Human => print!("{text}"),
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Who asks: NAME, user:NAME or service:NAME.
    #[arg(long)]
    principal: String,
    /// What they ask: state:read, state:write, state:lock, state:unlock, state:force-unlock,
    /// state:force-write or state:delete.
    #[arg(long)]
    action: String,
    /// In which environment.
    #[arg(long)]
    env: String,
    /// The state name the policies see.
    #[arg(long, default_value = "default")]
    state: String,
    /// The lock operation the policies see, e.g. OperationTypeApply or state-push.
    #[arg(long, default_value = "")]
    operation: String,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl PolicyCommand {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let args = match self {
            PolicyCommand::Matrix(args) => return args.run().await,
            PolicyCommand::Schema => {
                print!("{}", SCHEMA.trim_start());
                return Ok(ExitCode::SUCCESS);
            }
            PolicyCommand::Explain(args) => args,
        };
        let config = args.config.load()?;
        let principal = Principal::lookup(&config, &args.principal).ok_or_else(|| {
            CliError::Usage(format!(
                "`{}` is not a user or service in the config",
                args.principal
            ))
        })?;
        let action = Action::parse(&args.action).ok_or_else(|| {
            let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
            CliError::Usage(format!(
                "unknown action `{}`: use one of {}",
                args.action,
                known.join(", ")
            ))
        })?;
        let env = config.environment(&args.env).ok_or_else(|| {
            CliError::Usage(format!(
                "there is no environment `{}` in the config",
                args.env
            ))
        })?;
        let policy = Policy::compile(&config).map_err(|e| CliError::Usage(e.to_string()))?;
        let decision = policy.decide(
            &principal,
            action,
            &env.name,
            &RequestContext {
                state: &args.state,
                operation: &args.operation,
                source_ip: None,
            },
        );
        let sentence = (!decision.allowed).then(|| refusal::sentence(&principal, action, env));
        match args.format {
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "principal": principal.to_string(),
                    "action": action.as_str(),
                    "environment": env.name,
                    "allowed": decision.allowed,
                    "policies": decision.policies,
                    "errors": decision.errors,
                    "refusal": sentence,
                })
            ),
            Format::Human => {
                let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
                println!("{verdict}: {principal} {} in {}", action.as_str(), env.name);
                println!("decided by: {}", decision.explanation());
                for e in &decision.errors {
                    println!("policy error: {e}");
                }
                if let Some(s) = sentence {
                    println!("the refused caller reads: {s}");
                }
            }
        }
        Ok(if decision.allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}
