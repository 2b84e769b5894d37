//! Authorization: the config's environment blocks compiled to Cedar policies and entities,
//! plus optional custom policy files, evaluated with default deny.
//!
//! Pure: no I/O past reading the policy files at compile time. Every [`Decision`] carries the
//! ids of the policies that decided it, which is what the audit log records and what
//! `bulkhead policy explain` shows.

pub mod refusal;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use ipnet::IpNet;

use crate::certificate::{ClientCertificate, Requirement};
use crate::config::{Config, Environment, Subject, Template};
use crate::principal::Principal;

/// The Cedar schema custom policies are validated against.
pub const SCHEMA: &str = r#"
namespace Bulkhead {
  entity Team;
  entity User in [Team];
  entity Service;
  entity Environment = { owner: String, template?: String, member?: User };
  type Certificate = { subject: String, dns: Set<String>, uris: Set<String> };
  type RequestContext = {
    state: String,
    operation: String,
    source_ip: ipaddr,
    certificate?: Certificate,
  };
  action "state:read", "state:write", "state:lock", "state:unlock", "state:force-unlock",
         "state:force-write", "state:delete", "state:rollback", "change:create",
         "change:approve", "breakglass:open", "audit:read", "drift:report",
         "drift:acknowledge", "admin"
    appliesTo { principal: [User, Service], resource: [Environment], context: RequestContext };
}
"#;

/// An action on an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    StateRead,
    StateWrite,
    StateLock,
    StateUnlock,
    StateForceUnlock,
    StateForceWrite,
    StateDelete,
    StateRollback,
    ChangeCreate,
    ChangeApprove,
    BreakglassOpen,
    /// Read the environment's audit log over the API (`GET /v1/audit`).
    AuditRead,
    /// Post what a refresh-only plan found (`bulkhead drift report`): a writer's right.
    DriftReport,
    /// Acknowledge a signal or a drift, with a reason: the owner's, and its approvers'.
    DriftAcknowledge,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::StateRead,
        Action::StateWrite,
        Action::StateLock,
        Action::StateUnlock,
        Action::StateForceUnlock,
        Action::StateForceWrite,
        Action::StateDelete,
        Action::StateRollback,
        Action::ChangeCreate,
        Action::ChangeApprove,
        Action::BreakglassOpen,
        Action::AuditRead,
        Action::DriftReport,
        Action::DriftAcknowledge,
    ];

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::StateRead => "state:read",
            Action::StateWrite => "state:write",
            Action::StateLock => "state:lock",
            Action::StateUnlock => "state:unlock",
            Action::StateForceUnlock => "state:force-unlock",
            Action::StateForceWrite => "state:force-write",
            Action::StateDelete => "state:delete",
            Action::StateRollback => "state:rollback",
            Action::ChangeCreate => "change:create",
            Action::ChangeApprove => "change:approve",
            Action::BreakglassOpen => "breakglass:open",
            Action::AuditRead => "audit:read",
            Action::DriftReport => "drift:report",
            Action::DriftAcknowledge => "drift:acknowledge",
        }
    }

    fn uid(self) -> EntityUid {
        uid("Action", self.as_str())
    }
}

/// What a request looks like to the policies beyond who, what and where.
#[derive(Debug, Clone)]
pub struct RequestContext<'a> {
    pub state: &'a str,
    /// The lock operation (`OperationTypeApply`, `state-push`, ...) or empty.
    pub operation: &'a str,
    /// The client's address: behind a trusted proxy, the one it forwarded for.
    pub source_ip: Option<IpAddr>,
    /// The client certificate the connection presented and the server verified.
    pub certificate: Option<&'a ClientCertificate>,
}

impl RequestContext<'_> {
    /// The client's address; 0.0.0.0 when there is none.
    fn address(&self) -> IpAddr {
        self.source_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }
}

/// An authorization decision and the policies that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The ids of the deciding policies; empty for a default deny.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate (they count as not applying).
    pub errors: Vec<String>,
    /// The barrier that refused it, when one did: nothing stands in for it.
    pub barrier: Option<Barrier>,
    /// Whether the permits allow it, barriers aside: then the barrier is what the refused
    /// caller is told of.
    pub permitted: bool,
}

/// A rule of the config that refuses what the permits allow, whoever asks: where requests
/// come from, and the certificate a service's requests come with. Compiled to `forbid`
/// policies. An open break-glass grant stands in for a permit the policies lack, never for
/// a barrier: it is lifted by asking from the right place, with the right certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Barrier {
    /// An environment's `write_from` (then `writes` is true) or `read_from`.
    Network { writes: bool, networks: Vec<IpNet> },
    /// A service's `certificate` block.
    Certificate {
        service: String,
        required: Requirement,
    },
}

impl Barrier {
    /// The attribute of the config that sets it.
    pub fn attribute(&self) -> &'static str {
        match self {
            Barrier::Network { writes: true, .. } => "write_from",
            Barrier::Network { writes: false, .. } => "read_from",
            Barrier::Certificate { .. } => "certificate",
        }
    }
}

/// What `write_from` bars from elsewhere: the actions that change a state. Releasing a lock
/// changes none, so an owner may still force-unlock a stuck apply from where they are.
const WRITE_FROM_ACTIONS: [Action; 5] = [
    Action::StateWrite,
    Action::StateLock,
    Action::StateForceWrite,
    Action::StateDelete,
    Action::StateRollback,
];

impl Decision {
    /// One line naming what decided: the policies, or the default deny.
    pub fn explanation(&self) -> String {
        if self.policies.is_empty() {
            "default deny (no policy permits it)".to_string()
        } else {
            self.policies.join(", ")
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("internal policy error: {0}")]
    Internal(String),
}

/// The compiled policies and the entities they speak of.
///
/// Each declared environment gets a policy set of its own (its generated policies and every
/// custom one), so a decision evaluates the policies that can apply to it rather than every
/// environment's; it is compiled by the first decision on the environment, so that a config
/// of ten thousand environments costs, at start and in memory, the sets of those in use. The
/// environments made from a `personal` template share one set, the template's, whose
/// policies speak of the environment's member (an attribute of its entity) rather than name
/// each: ten thousand members cost ten thousand entities, not ten thousand policies to parse
/// and evaluate.
pub struct Policy {
    by_environment: HashMap<String, Policies>,
    /// The custom policies alone: all that can apply to an environment not in the config.
    custom: PolicySet,
    entities: Entities,
    authorizer: Authorizer,
    /// The `ip(...)` value of each client address seen lately: building one parses the
    /// extension's name, which costs more than the rest of a request's context.
    source_ips: BoundedCache<IpAddr, RestrictedExpression>,
    /// The decisions made lately. A decision depends on nothing but what it was asked (the
    /// policies and entities never change after compiling), and a client repeats the same
    /// requests: terraform reads and locks the same states, from the same address.
    decided: BoundedCache<Asked, Decision>,
    /// The barriers, by the id of the policy compiled from each.
    barriers: HashMap<String, Barrier>,
}

/// The policy set of one environment: its template's, or its own, compiled when first needed.
enum Policies {
    Template(Arc<PolicySet>),
    Declared(Box<Declared>),
}

/// A declared environment's block, and the policies compiled from it once needed.
struct Declared {
    env: Environment,
    compiled: std::sync::OnceLock<Result<PolicySet, String>>,
}

/// Everything a decision depends on besides the compiled policies.
#[derive(PartialEq, Eq, Hash)]
struct Asked {
    principal: Principal,
    action: Action,
    environment: String,
    state: String,
    operation: String,
    source_ip: IpAddr,
    certificate: Option<ClientCertificate>,
}

/// A cache of values worked out before (decisions, parsed source IPs), at most
/// [`BoundedCache::MAX`] entries; past that it starts over, so a caller varying its input
/// cannot grow it.
struct BoundedCache<K, V> {
    kept: std::sync::Mutex<HashMap<K, V>>,
}

impl<K: Eq + std::hash::Hash, V: Clone> BoundedCache<K, V> {
    const MAX: usize = 4096;

    fn new() -> Self {
        BoundedCache {
            kept: std::sync::Mutex::default(),
        }
    }

    /// The value kept for `key`, or the one `work_out` gives (outside the lock), then kept.
    fn get_or(&self, key: K, work_out: impl FnOnce() -> V) -> V {
        // Only whole values are inserted: a poisoned map is still a consistent one.
        let kept = || {
            self.kept
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(value) = kept().get(&key) {
            return value.clone();
        }
        let value = work_out();
        let mut kept = kept();
        if kept.len() >= Self::MAX {
            kept.clear();
        }
        kept.insert(key, value.clone());
        value
    }
}

impl Policy {
    pub fn compile(config: &Config) -> Result<Policy, PolicyError> {
        let internal = |e: &dyn std::fmt::Display| PolicyError::Internal(e.to_string());
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| internal(&e))?;
        let mut custom = PolicySet::new();
        for path in &config.policy_files {
            add_policy_file(&mut custom, &schema, path)?;
        }
        // The services' certificates hold in every environment, so they go with the custom
        // policies into every environment's set.
        let mut barriers = HashMap::new();
        let certificates = certificate_policies(config, &mut barriers);
        add_generated(&mut custom, certificates).map_err(|e| internal(&e))?;
        for env in &config.environments {
            barriers.extend(network_barrier_list(env));
        }
        let mut templates = HashMap::new();
        for template in &config.templates {
            let mut policies = custom.clone();
            add_generated(&mut policies, template_policies(template)).map_err(|e| internal(&e))?;
            templates.insert(template.name.as_str(), Arc::new(policies));
        }
        let mut by_environment = HashMap::new();
        for env in &config.environments {
            let policies = match &env.personal {
                Some(personal) => match templates.get(personal.template.as_str()) {
                    Some(set) => Policies::Template(set.clone()),
                    None => return Err(internal(&format!("{}: no template", env.name))),
                },
                None => Policies::Declared(Box::new(Declared {
                    env: env.clone(),
                    compiled: std::sync::OnceLock::new(),
                })),
            };
            by_environment.insert(env.name.clone(), policies);
        }
        let entities =
            Entities::from_entities(entities(config)?, Some(&schema)).map_err(|e| internal(&e))?;
        Ok(Policy {
            by_environment,
            custom,
            entities,
            authorizer: Authorizer::new(),
            source_ips: BoundedCache::new(),
            decided: BoundedCache::new(),
            barriers,
        })
    }

    /// The decision on a request: the one made lately on the very same request, if any.
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        environment: &str,
        context: &RequestContext<'_>,
    ) -> Decision {
        let asked = Asked {
            principal: principal.clone(),
            action,
            environment: environment.to_string(),
            state: context.state.to_string(),
            operation: context.operation.to_string(),
            source_ip: context.address(),
            certificate: context.certificate.cloned(),
        };
        let evaluate = || self.evaluate(principal, action, environment, context);
        self.decided.get_or(asked, evaluate)
    }

    /// The decision of the policies, evaluated now: what [`Policy::decide`] remembers.
    pub fn evaluate(
        &self,
        principal: &Principal,
        action: Action,
        environment: &str,
        context: &RequestContext<'_>,
    ) -> Decision {
        let deny = |error: String| Decision {
            allowed: false,
            policies: Vec::new(),
            errors: vec![error],
            barrier: None,
            permitted: false,
        };
        // Built from typed values, so neither needs checking against the schema again: the
        // policies were validated against it when they were compiled.
        let address = context.address();
        let certificate = match context.certificate.map(certificate_expression) {
            None => None,
            Some(Ok(value)) => Some(("certificate".to_string(), value)),
            Some(Err(e)) => return deny(format!("request certificate: {e}")),
        };
        let context = Context::from_pairs(
            [
                (
                    "state".to_string(),
                    RestrictedExpression::new_string(context.state.to_string()),
                ),
                (
                    "operation".to_string(),
                    RestrictedExpression::new_string(context.operation.to_string()),
                ),
                (
                    "source_ip".to_string(),
                    self.source_ips.get_or(address, || {
                        RestrictedExpression::new_ip(address.to_string())
                    }),
                ),
            ]
            .into_iter()
            .chain(certificate),
        );
        let context = match context {
            Ok(c) => c,
            Err(e) => return deny(format!("request context: {e}")),
        };
        let request = match Request::new(
            principal_uid(principal),
            action.uid(),
            uid("Environment", environment),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return deny(format!("request: {e}")),
        };
        let set = match self.by_environment.get(environment) {
            None => &self.custom,
            Some(Policies::Template(set)) => &**set,
            Some(Policies::Declared(declared)) => {
                let compiled = declared.compiled.get_or_init(|| {
                    let mut policies = self.custom.clone();
                    add_generated(&mut policies, generated_policies(&declared.env))
                        .map(|()| policies)
                });
                match compiled {
                    Ok(set) => set,
                    Err(e) => return deny(format!("the policies of {environment}: {e}")),
                }
            }
        };
        let response = self.authorizer.is_authorized(&request, set, &self.entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| id.to_string())
            .collect();
        policies.sort();
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let barrier = if allowed {
            None
        } else {
            policies
                .iter()
                .find_map(|id| self.barriers.get(id))
                .cloned()
        };
        let permitted = allowed
            || (barrier.is_some() && self.permitted_without_barriers(&policies, &request, set));
        Decision {
            allowed,
            barrier,
            permitted,
            policies,
            errors: response
                .diagnostics()
                .errors()
                .map(|e| e.to_string())
                .collect(),
        }
    }

    /// Whether `request`, refused by the barriers among `deciding`, is allowed without them:
    /// one who may not write at all is told that, not that the network is wrong. Only
    /// refusals by a barrier pay for the second evaluation.
    fn permitted_without_barriers(
        &self,
        deciding: &[String],
        request: &Request,
        set: &PolicySet,
    ) -> bool {
        let mut without = set.clone();
        for id in deciding.iter().filter(|id| self.barriers.contains_key(*id)) {
            if without.remove_static(PolicyId::new(id)).is_err() {
                return false;
            }
        }
        let again = self
            .authorizer
            .is_authorized(request, &without, &self.entities);
        again.decision() == cedar_policy::Decision::Allow
    }
}

/// A client certificate as the policies read it: `context.certificate`.
fn certificate_expression(c: &ClientCertificate) -> Result<RestrictedExpression, String> {
    let texts = |values: &[String]| {
        RestrictedExpression::new_set(
            values
                .iter()
                .map(|v| RestrictedExpression::new_string(v.clone())),
        )
    };
    RestrictedExpression::new_record([
        (
            "subject".to_string(),
            RestrictedExpression::new_string(c.subject.clone()),
        ),
        ("dns".to_string(), texts(&c.dns)),
        ("uris".to_string(), texts(&c.uris)),
    ])
    .map_err(|e| e.to_string())
}

/// The entity types of SCHEMA, parsed once.
static ENTITY_TYPES: LazyLock<HashMap<&'static str, cedar_policy::EntityTypeName>> =
    LazyLock::new(|| {
        ["User", "Team", "Service", "Environment", "Action"]
            .into_iter()
            .filter_map(|kind| {
                let name = cedar_policy::EntityTypeName::from_str(&format!("Bulkhead::{kind}"));
                name.ok().map(|name| (kind, name))
            })
            .collect()
    });

fn uid(kind: &str, id: &str) -> EntityUid {
    let Some(name) = ENTITY_TYPES.get(kind) else {
        unreachable!("uid() is called with the entity types of SCHEMA only, not {kind}")
    };
    EntityUid::from_type_name_and_id(name.clone(), cedar_policy::EntityId::new(id))
}

fn principal_uid(p: &Principal) -> EntityUid {
    match p {
        Principal::User(n) => uid("User", n),
        Principal::Service(n) => uid("Service", n),
    }
}

fn subject_ref(s: &Subject) -> String {
    let (kind, name) = match s {
        Subject::Team(n) => ("Team", n),
        Subject::User(n) => ("User", n),
        Subject::Service(n) => ("Service", n),
    };
    format!("Bulkhead::{kind}::{}", quote(name))
}

fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The policies an environment block stands for, each with an id that says where it came
/// from: `<environment>.<attribute>.<subject>`, e.g. `prod.write.service:ci-prod`.
fn generated_policies(env: &Environment) -> Vec<(String, String)> {
    use Action::*;
    let mut out = Vec::new();
    let approvers = env.approval.as_ref().map_or(&[][..], |a| &a.approvers[..]);
    let breakglass = env.breakglass.as_ref().map_or(&[][..], |b| &b.allowed[..]);
    let grants: [(&str, &[Subject], &[Action]); 8] = [
        (
            "owner",
            std::slice::from_ref(&env.owner),
            &[StateRead, ChangeCreate, AuditRead, DriftAcknowledge],
        ),
        ("read", &env.read, &[StateRead, ChangeCreate]),
        ("write", &env.write, &WRITER_ACTIONS),
        // Read too: terraform 1.15's `force-unlock` reads the state before it unlocks.
        (
            "force_unlock",
            &env.force_unlock,
            &[StateRead, StateUnlock, StateForceUnlock],
        ),
        ("force_write", &env.force_write, &[StateForceWrite]),
        ("delete", &env.delete, &[StateDelete]),
        (
            "approval.approvers",
            approvers,
            &[StateRead, ChangeApprove, DriftAcknowledge],
        ),
        (
            "breakglass.allowed",
            breakglass,
            &[StateRead, BreakglassOpen],
        ),
    ];
    let resource = format!("resource == Bulkhead::Environment::{}", quote(&env.name));
    for (id, barrier) in network_barrier_list(env) {
        let Barrier::Network { writes, networks } = &barrier else {
            continue;
        };
        let actions = if *writes {
            format!("action in [{}]", action_list(&WRITE_FROM_ACTIONS))
        } else {
            "action".to_string()
        };
        let inside = networks
            .iter()
            .map(|n| format!("context.source_ip.isInRange(ip({}))", quote(&n.to_string())))
            .collect::<Vec<_>>()
            .join(" || ");
        out.push((
            id,
            format!("forbid(principal, {actions}, {resource}) unless {{ {inside} }};"),
        ));
    }
    for (attr, subjects, actions) in grants {
        for subject in subjects {
            out.push((
                format!("{}.{attr}.{subject}", env.name),
                format!(
                    "permit(principal in {}, action in [{}], {resource});",
                    subject_ref(subject),
                    action_list(actions),
                ),
            ));
        }
    }
    out
}

/// The network barriers of an environment, with the ids of their policies:
/// `<environment>.write_from` and `<environment>.read_from`.
fn network_barrier_list(env: &Environment) -> Vec<(String, Barrier)> {
    [(true, &env.write_from), (false, &env.read_from)]
        .into_iter()
        .filter(|(_, networks)| !networks.is_empty())
        .map(|(writes, networks)| {
            let barrier = Barrier::Network {
                writes,
                networks: networks.clone(),
            };
            (format!("{}.{}", env.name, barrier.attribute()), barrier)
        })
        .collect()
}

/// The policies of the services' `certificate` blocks, `service:<name>.certificate`, each
/// refusing every request of its service without the certificate; noted in `barriers`.
fn certificate_policies(
    config: &Config,
    barriers: &mut HashMap<String, Barrier>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, service) in &config.services {
        let Some(required) = &service.certificate else {
            continue;
        };
        let condition = match required {
            Requirement::Subject(s) => format!("context.certificate.subject == {}", quote(s)),
            Requirement::Dns(d) => format!("context.certificate.dns.contains({})", quote(d)),
            Requirement::Uri(u) => format!("context.certificate.uris.contains({})", quote(u)),
        };
        let id = format!("service:{name}.certificate");
        out.push((
            id.clone(),
            format!(
                "forbid(principal == Bulkhead::Service::{}, action, resource) unless {{ context has certificate && {condition} }};",
                quote(name)
            ),
        ));
        barriers.insert(
            id,
            Barrier::Certificate {
                service: name.clone(),
                required: required.clone(),
            },
        );
    }
    out
}

/// Parses generated policies (`(id, text)`) into `set`.
fn add_generated(set: &mut PolicySet, generated: Vec<(String, String)>) -> Result<(), String> {
    for (id, text) in generated {
        let policy = cedar_policy::Policy::parse(Some(PolicyId::new(&id)), &text)
            .map_err(|e| format!("{id}: {e}"))?;
        set.add(policy).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What the member of a personal environment may do in it: everything a writer may, release
/// and delete its states, and read its audit log. Never approve (nothing in it needs
/// approving) nor push another lineage.
const MEMBER_ACTIONS: [Action; 11] = [
    Action::StateRead,
    Action::StateWrite,
    Action::StateLock,
    Action::StateUnlock,
    Action::StateForceUnlock,
    Action::StateDelete,
    Action::StateRollback,
    Action::ChangeCreate,
    Action::AuditRead,
    Action::DriftReport,
    Action::DriftAcknowledge,
];

/// The policies of a `personal` template, shared by every environment made from it, with ids
/// `<template>.member` and `<template>.<attribute>.<subject>`, e.g. `sandbox.read.team:platform`.
/// Each is confined to the template's environments by its `template` attribute, besides being
/// evaluated for them alone.
fn template_policies(template: &Template) -> Vec<(String, String)> {
    use Action::*;
    let name = &template.name;
    let of_template = format!(
        "when {{ resource has template && resource.template == {} }}",
        quote(name)
    );
    let mut out = vec![(
        format!("{name}.member"),
        format!(
            "permit(principal, action in [{}], resource) when {{ resource has member && resource.member == principal }} {of_template};",
            action_list(&MEMBER_ACTIONS)
        ),
    )];
    let grants: [(&str, &[Subject], &[Action]); 2] = [
        ("read", &template.read, &[StateRead, ChangeCreate]),
        ("write", &template.write, &WRITER_ACTIONS),
    ];
    for (attr, subjects, actions) in grants {
        for subject in subjects {
            out.push((
                format!("{name}.{attr}.{subject}"),
                format!(
                    "permit(principal in {}, action in [{}], resource) {of_template};",
                    subject_ref(subject),
                    action_list(actions),
                ),
            ));
        }
    }
    out
}

/// What `write` grants.
const WRITER_ACTIONS: [Action; 7] = [
    Action::StateRead,
    Action::StateWrite,
    Action::StateLock,
    Action::StateUnlock,
    Action::StateRollback,
    Action::ChangeCreate,
    Action::DriftReport,
];

/// `actions` as the list of a Cedar `action in [...]`.
fn action_list(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| format!("Bulkhead::Action::{}", quote(a.as_str())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn add_policy_file(
    set: &mut PolicySet,
    schema: &Schema,
    path: &PathBuf,
) -> Result<(), PolicyError> {
    let invalid = |message: String| PolicyError::Invalid {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.clone(),
        source,
    })?;
    let parsed = PolicySet::from_str(&text).map_err(|e| invalid(format!("{e:?}")))?;
    if parsed.templates().next().is_some() {
        return Err(invalid(
            "policy templates are not supported; write plain policies".into(),
        ));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut this_file = PolicySet::new();
    for (i, policy) in parsed.policies().enumerate() {
        let id = policy
            .annotation("id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{file_name}#{}", i + 1));
        this_file
            .add(policy.new_id(PolicyId::new(&id)))
            .map_err(|e| invalid(format!("policy {id}: {e}")))?;
    }
    let result = Validator::new(schema.clone()).validate(&this_file, ValidationMode::Strict);
    if !result.validation_passed() {
        let problems: Vec<String> = result.validation_errors().map(|e| format!("{e}")).collect();
        return Err(invalid(format!(
            "does not match the bulkhead schema (see `bulkhead policy schema`): {}",
            problems.join("; ")
        )));
    }
    for policy in this_file.policies() {
        set.add(policy.clone())
            .map_err(|e| invalid(format!("policy {}: {e}", policy.id())))?;
    }
    Ok(())
}

fn entities(config: &Config) -> Result<Vec<Entity>, PolicyError> {
    let internal = |e: &dyn std::fmt::Display| PolicyError::Internal(e.to_string());
    let mut out = Vec::new();
    for team in config.teams.keys() {
        out.push(Entity::new_no_attrs(uid("Team", team), HashSet::new()));
    }
    for user in &config.users {
        let teams = config.teams_of(user).map(|t| uid("Team", t)).collect();
        out.push(Entity::new_no_attrs(uid("User", user), teams));
    }
    for service in config.services.keys() {
        out.push(Entity::new_no_attrs(
            uid("Service", service),
            HashSet::new(),
        ));
    }
    for env in &config.environments {
        let mut attrs = HashMap::from([(
            "owner".to_string(),
            RestrictedExpression::new_string(env.owner.to_string()),
        )]);
        if let Some(personal) = &env.personal {
            attrs.insert(
                "template".to_string(),
                RestrictedExpression::new_string(personal.template.clone()),
            );
            // A former member's environment has no member for `<template>.member` to grant.
            if !personal.former {
                attrs.insert(
                    "member".to_string(),
                    RestrictedExpression::new_entity_uid(uid("User", &personal.member)),
                );
            }
        }
        out.push(
            Entity::new(uid("Environment", &env.name), attrs, HashSet::new())
                .map_err(|e| internal(&e))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            Path::new("b.hcl"),
            r#"
team "platform" { members = ["pat"] }
team "app" { members = ["alice"] }
service "ci-prod" {}
environment "dev" {
  owner = "team:app"
  read  = ["team:app", "team:platform"]
  write = ["team:app", "team:platform"]
}
environment "prod" {
  owner = "team:platform"
  read  = ["team:app", "team:platform"]
  write = ["service:ci-prod"]
}
"#,
        )
        .unwrap()
    }

    /// The test config compiled with one custom policy file, `name`, holding `text`.
    fn compiled_with(name: &str, text: &str) -> Result<Policy, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut c = config();
        c.policy_files = vec![path];
        Policy::compile(&c)
    }

    fn ctx() -> RequestContext<'static> {
        RequestContext {
            state: "network",
            operation: "OperationTypeApply",
            source_ip: None,
            certificate: None,
        }
    }

    #[test]
    fn environment_blocks_decide_with_their_ids() {
        let p = Policy::compile(&config()).unwrap();
        let alice = Principal::User("alice".into());
        let ci = Principal::Service("ci-prod".into());
        let d = p.decide(&alice, Action::StateWrite, "dev", &ctx());
        assert!(d.allowed);
        assert_eq!(d.policies, vec!["dev.write.team:app"]);
        assert!(p.decide(&alice, Action::StateRead, "prod", &ctx()).allowed);
        let d = p.decide(&alice, Action::StateWrite, "prod", &ctx());
        assert!(!d.allowed);
        assert_eq!(d.explanation(), "default deny (no policy permits it)");
        assert!(p.decide(&ci, Action::StateLock, "prod", &ctx()).allowed);
        assert!(!p.decide(&ci, Action::StateWrite, "dev", &ctx()).allowed);
        // The owner may force-unlock; nobody may force-write unless named.
        let pat = Principal::User("pat".into());
        assert!(
            p.decide(&pat, Action::StateForceUnlock, "prod", &ctx())
                .allowed
        );
        assert!(
            !p.decide(&pat, Action::StateForceWrite, "prod", &ctx())
                .allowed
        );
        assert!(
            !p.decide(&alice, Action::StateRead, "nowhere", &ctx())
                .allowed
        );
    }

    #[test]
    fn custom_policies_are_validated_and_can_forbid() {
        let p = compiled_with(
            "freeze.cedar",
            "@id(\"freeze-prod\")\nforbid(principal, action == Bulkhead::Action::\"state:write\", resource == Bulkhead::Environment::\"prod\");",
        )
        .unwrap();
        let d = p.decide(
            &Principal::Service("ci-prod".into()),
            Action::StateWrite,
            "prod",
            &ctx(),
        );
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["freeze-prod"]);

        let e = compiled_with(
            "bad.cedar",
            "permit(principal == Bulkhead::Robot::\"x\", action, resource);",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("bad.cedar"), "{e}");
    }

    #[test]
    fn a_custom_policy_sees_each_requests_own_source_address() {
        let p = compiled_with(
            "office.cedar",
            "@id(\"office-only\")\nforbid(principal, action, resource == Bulkhead::Environment::\"dev\") unless { context.source_ip.isInRange(ip(\"10.0.0.0/8\")) };",
        )
        .unwrap();
        let alice = Principal::User("alice".into());
        let from = |ip: [u8; 4]| RequestContext {
            source_ip: Some(IpAddr::from(ip)),
            ..ctx()
        };
        // Alternately, so that an address remembered for one request is not used for another.
        for _ in 0..2 {
            assert!(
                p.decide(&alice, Action::StateRead, "dev", &from([10, 1, 2, 3]))
                    .allowed
            );
            let d = p.decide(&alice, Action::StateRead, "dev", &from([192, 0, 2, 1]));
            assert!(!d.allowed);
            assert_eq!(d.policies, vec!["office-only"]);
        }
    }

    #[test]
    fn a_remembered_decision_is_used_only_for_the_very_same_request() {
        let p = compiled_with(
            "frozen.cedar",
            "@id(\"frozen\")\nforbid(principal, action == Bulkhead::Action::\"state:write\", resource) when { context.state == \"frozen\" && context.operation == \"state-push\" };",
        )
        .unwrap();
        let alice = Principal::User("alice".into());
        let bob = Principal::User("bob".into());
        let asked = |state, operation| RequestContext {
            state,
            operation,
            ..ctx()
        };
        // Each request twice in a row and the others in between, so that a decision taken
        // from memory would show wherever one of its inputs were left out of what is kept.
        for _ in 0..2 {
            for (who, state, operation, allowed) in [
                (&alice, "frozen", "state-push", false),
                (&alice, "frozen", "", true),
                (&alice, "app", "state-push", true),
                (&bob, "app", "state-push", false),
            ] {
                for _ in 0..2 {
                    let d = p.decide(who, Action::StateWrite, "dev", &asked(state, operation));
                    assert_eq!(d.allowed, allowed, "{who:?} {state} {operation:?}");
                }
            }
            assert!(!p.decide(&alice, Action::StateWrite, "prod", &ctx()).allowed);
            assert!(p.decide(&alice, Action::StateRead, "prod", &ctx()).allowed);
        }
    }

    #[test]
    fn a_personal_template_lets_its_member_write_their_own_and_its_readers_read() {
        let text = r#"
team "platform" { members = ["pat"] }
team "app" { members = ["alice", "bob"] }
personal "sandbox" {
  members = ["team:app"]
  read    = ["team:platform"]
}
"#;
        let c = Config::parse(Path::new("b.hcl"), text).unwrap();
        let p = Policy::compile(&c).unwrap();
        let user = |n: &str| Principal::User(n.into());
        let decide = |who: &str, action, env| p.decide(&user(who), action, env, &ctx());
        let mine = decide("alice", Action::StateWrite, "sandbox-alice");
        assert!(mine.allowed);
        assert_eq!(mine.policies, vec!["sandbox.member".to_string()]);
        assert!(decide("alice", Action::StateDelete, "sandbox-alice").allowed);
        assert!(!decide("alice", Action::StateForceWrite, "sandbox-alice").allowed);
        for action in [Action::StateWrite, Action::StateLock, Action::StateRead] {
            assert!(
                !decide("bob", action, "sandbox-alice").allowed,
                "{action:?}"
            );
            assert!(
                !decide("alice", action, "sandbox-bob").allowed,
                "{action:?}"
            );
        }
        let read = decide("pat", Action::StateRead, "sandbox-bob");
        assert!(read.allowed);
        assert_eq!(
            read.policies,
            vec!["sandbox.read.team:platform".to_string()]
        );
        assert!(!decide("pat", Action::StateWrite, "sandbox-bob").allowed);
        // An environment of that name the config does not have is nobody's.
        assert!(!decide("alice", Action::StateWrite, "sandbox-carol").allowed);
    }

    /// [`config`] with prod written from 10.20.0.0/16 only, and ci-prod bound to its
    /// runner's certificate.
    fn barred() -> Config {
        let text = r#"
server {
  tls {
    cert_file      = "c.pem"
    key_file       = "k.pem"
    client_ca_file = "ca.pem"
  }
}
team "platform" { members = ["pat"] }
team "app" { members = ["alice"] }
service "ci-prod" {
  certificate { subject = "CN=runner-prod,O=acme" }
}
environment "dev" {
  owner = "team:app"
  read  = ["team:app", "team:platform", "service:ci-prod"]
  write = ["team:app"]
}
environment "prod" {
  owner      = "team:platform"
  read       = ["team:app", "team:platform"]
  write      = ["service:ci-prod"]
  write_from = ["10.20.0.0/16"]
}
"#;
        Config::parse(Path::new("b.hcl"), text).unwrap()
    }

    #[test]
    fn barriers_refuse_what_the_permits_allow_and_only_that_is_told_as_theirs() {
        let p = Policy::compile(&barred()).unwrap();
        let runner = ClientCertificate {
            subject: "CN=runner-prod,O=acme".into(),
            dns: vec![],
            uris: vec![],
        };
        let laptop = ClientCertificate {
            subject: "CN=laptop,O=acme".into(),
            ..runner.clone()
        };
        let ask = |who: &Principal, action, env, ip: [u8; 4], cert: Option<&ClientCertificate>| {
            p.decide(
                who,
                action,
                env,
                &RequestContext {
                    source_ip: Some(IpAddr::from(ip)),
                    certificate: cert,
                    ..ctx()
                },
            )
        };
        let ci = Principal::Service("ci-prod".into());
        let alice = Principal::User("alice".into());
        let inside = [10, 20, 3, 4];
        let outside = [192, 0, 2, 1];
        assert!(ask(&ci, Action::StateWrite, "prod", inside, Some(&runner)).allowed);
        let d = ask(&ci, Action::StateWrite, "prod", outside, Some(&runner));
        assert!(!d.allowed);
        assert_eq!(d.policies, ["prod.write_from"]);
        assert!(matches!(
            d.barrier,
            Some(Barrier::Network { writes: true, .. })
        ));
        // Reads, and releasing a lock, are not writes.
        assert!(ask(&ci, Action::StateRead, "prod", outside, Some(&runner)).allowed);
        // Without the certificate, or with another: the certificate's barrier, everywhere.
        for cert in [None, Some(&laptop)] {
            let d = ask(&ci, Action::StateWrite, "prod", inside, cert);
            assert_eq!(d.policies, ["service:ci-prod.certificate"]);
            assert!(matches!(d.barrier, Some(Barrier::Certificate { .. })));
            let d = ask(&ci, Action::StateRead, "dev", inside, cert);
            assert!(matches!(d.barrier, Some(Barrier::Certificate { .. })));
        }
        assert!(d.permitted);
        // Someone the permits refuse anyway is told so, not that the network is wrong.
        let d = ask(&alice, Action::StateWrite, "prod", inside, None);
        assert!(!d.allowed && !d.permitted && d.barrier.is_none());
        let d = ask(&alice, Action::StateWrite, "prod", outside, None);
        assert!(!d.allowed && !d.permitted && d.barrier.is_some());
        // People need no certificate.
        assert!(ask(&alice, Action::StateWrite, "dev", outside, None).allowed);
        // With no address at all, nothing is inside a network.
        let d = p.decide(
            &ci,
            Action::StateWrite,
            "prod",
            &RequestContext {
                certificate: Some(&runner),
                ..ctx()
            },
        );
        assert!(matches!(d.barrier, Some(Barrier::Network { .. })));
    }

    #[test]
    fn a_custom_policy_can_read_the_client_certificate() {
        let p = compiled_with(
            "runner.cedar",
            "@id(\"dev-from-runners\")\nforbid(principal, action == Bulkhead::Action::\"state:write\", resource == Bulkhead::Environment::\"dev\") unless { context has certificate && context.certificate.dns.contains(\"runner.acme.internal\") };",
        )
        .unwrap();
        let alice = Principal::User("alice".into());
        let cert = ClientCertificate {
            subject: "CN=x".into(),
            dns: vec!["runner.acme.internal".into()],
            uris: vec![],
        };
        let with = |certificate| RequestContext {
            certificate,
            ..ctx()
        };
        assert!(
            p.decide(&alice, Action::StateWrite, "dev", &with(Some(&cert)))
                .allowed
        );
        let d = p.decide(&alice, Action::StateWrite, "dev", &with(None));
        assert_eq!(d.policies, ["dev-from-runners"]);
        // A custom policy is no barrier: break-glass may stand in for what it refuses.
        assert_eq!(d.barrier, None);
        assert!(!d.permitted);
    }
}
