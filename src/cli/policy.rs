//! `bulkhead policy explain|schema`: ask the compiled policies a question without a server.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{change_id, CliError, ConfigArg, Format};
use crate::certificate::{canonical_subject, ClientCertificate};
use crate::config::{Config, Environment};
use crate::identity::{Caller, Principal};
use crate::lock::HeldLock;
use crate::operations::{self, Asker, Gathered};
use crate::policy::{refusal, Action, Barrier, Decision, Policy, RequestContext, SCHEMA};
use crate::text::printable;
use crate::time::{Clock, Timestamp};
use crate::verdict::{self, Ask, Effect};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one request: which policy decided it, and what would change the answer.
    ///
    /// Exit 1 when it is denied. In a protected environment a write also needs an approved
    /// change (--change, read from the environment's database) and an allowed branch
    /// (--branch); where the pipeline binds applies, the commit its token proves (--commit)
    /// and the attestation of the change's plan by the same identity (--subject).
    ///
    /// Examples:
    ///   bulkhead policy explain --principal alice --action state:write --env prod
    ///   bulkhead policy explain --principal ci-prod --action state:lock --env prod \
    ///     --operation OperationTypeApply --change prod-3 --branch main --commit 4f1c...
    #[command(verbatim_doc_comment)]
    Explain(Box<ExplainArgs>),
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
        // Each principal asks with the certificate its service requires, from where the
        // environment lets writes come: the table shows what the permits grant, and the
        // barriers are listed beneath it.
        let principals: Vec<(Principal, Option<ClientCertificate>)> = Principal::all(&config)
            .into_iter()
            .map(|p| {
                let certificate = required_certificate(&config, &p);
                (p, certificate)
            })
            .collect();
        let mut matrix = serde_json::Map::new();
        let mut text = String::new();
        let mut table = |shown: String,
                         heading: String,
                         env: &Environment,
                         member: Option<&str>| {
            text.push_str(&heading);
            let mut rows = serde_json::Map::new();
            let source_ip = env.writable_from();
            for action in Action::ALL {
                let who: Vec<String> = principals
                    .iter()
                    .filter(|(p, certificate)| {
                        let ctx = RequestContext {
                            state: "",
                            operation: "",
                            source_ip,
                            certificate: certificate.as_ref(),
                        };
                        policy.decide(p, action, &env.name, &ctx).allowed
                    })
                    .map(|(p, _)| match member {
                        Some(member) if p.name() == member && matches!(p, Principal::User(_)) => {
                            "<member>".to_string()
                        }
                        _ => p.to_string(),
                    })
                    .collect();
                let shown = if who.is_empty() {
                    "-".to_string()
                } else {
                    who.join(", ")
                };
                text.push_str(&format!("  {:<20} {shown}\n", action.as_str()));
                rows.insert(action.as_str().into(), who.into());
            }
            for (attribute, networks, what) in [
                (
                    "write_from",
                    &env.write_from,
                    "states are changed only from",
                ),
                (
                    "read_from",
                    &env.read_from,
                    "requests are answered only from",
                ),
            ] {
                if networks.is_empty() {
                    continue;
                }
                let shown: Vec<String> = networks.iter().map(ToString::to_string).collect();
                text.push_str(&format!("  ({what} {} by {attribute})\n", shown.join(", ")));
                rows.insert(attribute.into(), shown.into());
            }
            matrix.insert(shown, rows.into());
        };
        for env in config.declared() {
            let heading = format!(
                "{} (owner {}{})\n",
                env.name,
                env.owner,
                if env.protected() { ", protected" } else { "" }
            );
            table(env.name.clone(), heading, env, None);
        }
        // A template once, as its members' environments have it (decided on the first
        // member's: the policies are the same for each), not one table per member.
        for template in &config.templates {
            // Its current members' environments: a former member's has no member to show.
            let made: Vec<(&Environment, &str)> = config
                .environments
                .iter()
                .filter_map(|e| Some((e, e.personal.as_ref()?)))
                .filter(|(_, p)| p.template == template.name && !p.former)
                .map(|(e, p)| (e, p.member.as_str()))
                .collect();
            let Some(&(env, member)) = made.first() else {
                continue;
            };
            let members = made.len();
            let shown = format!("{}-<member>", template.name);
            let heading =
                format!("{shown} (personal: one for each of {members} members, owner <member>)\n");
            table(shown, heading, env, Some(member));
        }
        for (name, service) in &config.services {
            if let Some(required) = &service.certificate {
                text.push_str(&format!(
                    "service:{name} is refused everywhere without a client certificate with {required}\n"
                ));
            }
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
    /// The state name the policies see (default: the change's state, else `default`).
    #[arg(long)]
    state: Option<String>,
    /// The lock operation the policies see, e.g. OperationTypeApply or state-push.
    #[arg(long, default_value = "")]
    operation: String,
    /// The change request the request names (`?change=` on the backend address), e.g. prod-3.
    #[arg(long)]
    change: Option<String>,
    /// The branch the caller's OIDC token proves, e.g. main.
    #[arg(long)]
    branch: Option<String>,
    /// The commit the caller's OIDC token proves (its `sha` claim), for an environment whose
    /// pipeline binds applies to their commit.
    #[arg(long)]
    commit: Option<String>,
    /// The OIDC subject the caller's token proves (its `sub` claim): with `bind = "plan"`,
    /// only the identity that attested a change's plan may apply it.
    #[arg(long)]
    subject: Option<String>,
    /// The client's address (behind a trusted proxy, the one it forwarded for). Default: an
    /// address that the environment's write_from and read_from both let in.
    #[arg(long, value_name = "IP")]
    from: Option<IpAddr>,
    /// The subject of the client certificate the request comes with, e.g.
    /// "CN=runner-prod,O=acme". Default: for a service with a certificate block, the
    /// certificate it requires; for anyone else, none.
    #[arg(long, value_name = "SUBJECT")]
    certificate_subject: Option<String>,
    /// A DNS name or URI (scheme://...) among the certificate's alternative names; repeat for
    /// more.
    #[arg(long = "certificate-name", value_name = "NAME")]
    certificate_names: Vec<String>,
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
            PolicyCommand::Explain(args) => *args,
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
        if let Some(text) = &args.change {
            change_id(text)?;
        }
        // What the server reads from the environment's database: the change named, and the
        // caller's open break-glass grant.
        let (change, breakglass) = if args.change.is_some() || env.breakglass.is_some() {
            operations::recorded(&config, env, &principal, args.change.as_deref())
                .await
                .context("cannot read the environment's database")?
        } else {
            (None, None)
        };
        let state = args
            .state
            .clone()
            .or_else(|| change.as_ref().map(|c| c.state.clone()))
            .unwrap_or_else(|| "default".into());
        let source_ip = args.from.or_else(|| env.writable_from());
        let certificate = presented(
            &config,
            &principal,
            args.certificate_subject.as_deref(),
            &args.certificate_names,
        )?;
        let caller = Caller {
            principal: principal.clone(),
            branch: args.branch.clone(),
            subject: args.subject.clone(),
            commit: args.commit.as_deref().map(str::to_ascii_lowercase),
            certificate,
        };
        let ctx = RequestContext {
            state: &state,
            operation: &args.operation,
            source_ip,
            certificate: caller.certificate.as_ref(),
        };
        let decision = policy.decide(&principal, action, &env.name, &ctx);
        let now = Clock::system().now();
        // Releasing a lock is asked of one the caller took; force-unlocking, of another's.
        let held = match action {
            Action::StateUnlock => Some(hypothetical_lock(&caller, &args.operation, now)),
            Action::StateForceUnlock => Some(hypothetical_lock(
                &Caller {
                    principal: Principal::User("someone-else".into()),
                    branch: None,
                    subject: None,
                    commit: None,
                    certificate: None,
                },
                &args.operation,
                now,
            )),
            _ => None,
        };
        let ask = match action {
            Action::StateLock => Some(Ask::Lock {
                id: "explain",
                operation: &args.operation,
            }),
            Action::StateWrite => Some(Ask::Write {
                lock_id: None,
                past: None,
            }),
            Action::StateUnlock => Some(Ask::Unlock { id: "explain" }),
            Action::StateForceUnlock => Some(Ask::ForceUnlock { id: None }),
            Action::StateDelete => Some(Ask::Delete),
            Action::StateRollback => Some(Ask::Rollback { past: None }),
            _ => None,
        };
        let binding = binding_lines(env, change.as_ref());
        // The facts as the server puts them together, from what it would read.
        let gathered = Gathered {
            held,
            own_read_lock: false,
            breakglass,
            named: change,
            lock_change: None,
        };
        let asker = Asker {
            policy: &policy,
            env,
            state: &state,
            caller: &caller,
            source_ip,
            change: args.change.as_deref(),
            now,
        };
        let verdict = ask.map(|ask| verdict::decide(ask, &gathered.facts(&asker)));
        // The verdict when the request changes a state; the policies alone otherwise.
        let (allowed, decided_by, sentence, note) = match &verdict {
            Some(v) => (
                v.allowed(),
                v.decided_by.clone(),
                v.outcome.as_ref().err().map(|r| r.sentence().to_string()),
                v.reason.clone().filter(|_| v.allowed()),
            ),
            None => (
                decision.allowed,
                decision.explanation(),
                (!decision.allowed)
                    .then(|| refusal::refused(&caller, action, env, &decision, source_ip)),
                None,
            ),
        };
        let read_lock = matches!(
            verdict.as_ref().map(|v| &v.outcome),
            Some(Ok(Effect::ReadLock))
        );
        let needs_change = env.protected()
            && matches!(
                action,
                Action::StateWrite
                    | Action::StateLock
                    | Action::StateRollback
                    | Action::StateDelete
            )
            && !read_lock;
        let asked = Asked {
            principal: &principal,
            action,
            env,
            ctx: &ctx,
        };
        let would = if read_lock {
            vec![format!(
                "any operation but a plan: this lock is granted only because {principal} may read {}, and it lets nothing be written",
                env.name
            )]
        } else {
            asked.would_change(&config, &policy, &decision, allowed, needs_change)
        };
        match args.format {
            Format::Json => println!(
                "{}",
                serde_json::json!({
                    "principal": principal.to_string(),
                    "action": action.as_str(),
                    "environment": env.name,
                    "state": state,
                    "change": args.change,
                    "branch": args.branch,
                    "commit": caller.commit,
                    "from": source_ip,
                    "certificate": caller.certificate.as_ref().map(ToString::to_string),
                    "binding": binding,
                    "allowed": allowed,
                    "note": note,
                    "policies": decision.policies,
                    "errors": decision.errors,
                    "decided_by": decided_by,
                    "refusal": sentence,
                    "would_change_the_answer": would,
                })
            ),
            Format::Human => {
                let verdict = if allowed { "ALLOW" } else { "DENY" };
                println!("{verdict}: {principal} {} in {}", action.as_str(), env.name);
                println!("decided by: {}", printable(&decided_by));
                if let Some(ip) = source_ip {
                    println!("asked from: {ip}");
                }
                if let Some(c) = &caller.certificate {
                    println!("with client certificate: {}", printable(&c.to_string()));
                }
                for line in &binding {
                    println!("binding: {}", printable(line));
                }
                if let Some(note) = &note {
                    println!("note: {}", printable(note));
                }
                for e in &decision.errors {
                    println!("policy error: {}", printable(&e.to_string()));
                }
                if let Some(s) = &sentence {
                    println!("the refused caller reads: {}", printable(s));
                }
                if !would.is_empty() {
                    println!("what would change the answer:");
                    for w in &would {
                        println!("  - {}", printable(&w.to_string()));
                    }
                }
            }
        }
        Ok(if allowed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    }
}

/// What binds an apply of `change` in `env` to what was approved, and where the change stands
/// with it: empty where the environment binds nothing.
fn binding_lines(env: &Environment, change: Option<&crate::changes::Change>) -> Vec<String> {
    let binding = env.binding();
    if !binding.commit && !binding.plan {
        return Vec::new();
    }
    let mut out = vec![format!(
        "{} binds each apply to its change's {}",
        env.name,
        binding.describe()
    )];
    let Some(c) = change else { return out };
    if binding.commit {
        out.push(match &c.commit {
            Some(sha) => format!(
                "change {} was planned from commit {sha} (as its author claims): the pipeline's OIDC `sha` claim must name it (--commit)",
                c.id
            ),
            None => format!("change {} names no commit: no pipeline can apply it", c.id),
        });
    }
    if binding.plan {
        out.push(match &c.attestation {
            Some(a) => format!(
                "revision {} of change {}'s plan was attested by {}{} at {}: only that identity may apply it",
                c.revision,
                c.id,
                a.describe(),
                a.subject
                    .as_deref()
                    .map(|s| format!(", OIDC subject {s}"))
                    .unwrap_or_default(),
                a.at
            ),
            None => format!(
                "no pipeline has attested revision {} of change {}'s plan (`bulkhead change attest {} --plan plan.json`): its lock is refused until one has",
                c.revision, c.id, c.id
            ),
        });
    }
    out
}

/// A certificate that meets what `principal`'s service block requires, if it requires one.
fn required_certificate(config: &Config, principal: &Principal) -> Option<ClientCertificate> {
    match principal {
        Principal::Service(name) => config.services.get(name)?.certificate.as_ref(),
        Principal::User(_) => None,
    }
    .map(|r| r.met())
}

/// The client certificate `principal`'s request is asked about with: the one the flags
/// describe, else the one its service's certificate block requires, else none.
fn presented(
    config: &Config,
    principal: &Principal,
    subject: Option<&str>,
    names: &[String],
) -> Result<Option<ClientCertificate>, CliError> {
    if subject.is_none() && names.is_empty() {
        return Ok(required_certificate(config, principal));
    }
    let subject = subject
        .map(canonical_subject)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--certificate-subject: {e}")))?;
    let (uris, dns): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| n.contains("://"));
    Ok(Some(ClientCertificate {
        subject: subject.unwrap_or_default(),
        dns: dns.iter().map(|d| d.to_ascii_lowercase()).collect(),
        uris,
    }))
}

/// A lock as `caller` would have taken it, for the questions that release one.
fn hypothetical_lock(caller: &Caller, operation: &str, now: Timestamp) -> HeldLock {
    HeldLock {
        lock_id: "explain".into(),
        principal: caller.principal.to_string(),
        branch: caller.branch.clone(),
        subject: caller.subject.clone(),
        operation: operation.to_string(),
        info: String::new(),
        created_at: now.stored(),
        change_number: None,
        active_at: None,
    }
}

/// One request put to the policies.
struct Asked<'a> {
    principal: &'a Principal,
    action: Action,
    env: &'a Environment,
    ctx: &'a RequestContext<'a>,
}

impl Asked<'_> {
    /// What would turn the answer around, in words: who else the policies allow, and the
    /// steps of the change process. `own` is the policies' decision for the principal asked.
    fn would_change(
        &self,
        config: &Config,
        policy: &Policy,
        own: &Decision,
        allowed: bool,
        needs_change: bool,
    ) -> Vec<String> {
        let Asked {
            principal,
            action,
            env,
            ctx,
        } = *self;
        let mut out = Vec::new();
        if let Some(barrier) = &own.barrier {
            out.push(match barrier {
                Barrier::Network { networks, .. } => format!(
                    "asking from {} ({}): the permits allow it from there (--from)",
                    networks
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    barrier.attribute()
                ),
                Barrier::Certificate { required, .. } => format!(
                    "a client certificate with {required}: the permits allow it with one (--certificate-subject, --certificate-name)"
                ),
            });
            return out;
        }
        if !own.allowed {
            let others: Vec<String> = Principal::all(config)
                .into_iter()
                .filter(|p| p != principal && policy.decide(p, action, &env.name, ctx).allowed)
                .map(|p| p.to_string())
                .collect();
            out.push(if others.is_empty() {
                format!(
                    "nobody may {} in {} under the current policies; ask {}",
                    action.as_str(),
                    env.name,
                    env.owner
                )
            } else {
                format!(
                    "being one of {}: the policies allow them",
                    others.join(", ")
                )
            });
            if let Some(bg) = env
                .breakglass
                .as_ref()
                .filter(|_| needs_change || action == Action::StateWrite)
            {
                let allowed: Vec<String> = bg.allowed.iter().map(ToString::to_string).collect();
                out.push(format!(
                "in an emergency, a break-glass grant (`bulkhead breakglass open --env {}`), which only {} may open, for themselves",
                env.name,
                allowed.join(", ")
            ));
            }
            return out;
        }
        if needs_change {
            if allowed {
                out.push(
                    "naming a change that is not approved, already applied, or for another state"
                        .into(),
                );
            } else {
                out.push(format!(
                "naming an approved, unused change for this state (`bulkhead change list --env {}`)",
                env.name
            ));
            }
            if let Some(p) = env.pipeline.as_ref().filter(|p| !p.branches.is_empty()) {
                out.push(format!(
                    "the branch proved by the caller's OIDC token: only {} may apply",
                    p.branches.join(", ")
                ));
            }
        }
        if allowed {
            out.push(format!(
                "{principal} no longer matching {}",
                own.policies.join(", ")
            ));
        }
        out
    }
}
