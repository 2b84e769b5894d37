//! A `personal` template: the sandbox environment every member of some teams gets, owned by
//! that member and written by them alone (plus whom the template names). The environments are
//! made from the template when the config is read; their databases are created on first use.

use std::time::Duration;

use super::{Environment, Subject, DEFAULT_MAX_PLAN_SIZE};

/// A `personal "NAME" { ... }` block.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// Where the block starts in the config file.
    pub line: usize,
    /// Who gets an environment: teams (each of their members) and users.
    pub members: Vec<Subject>,
    /// Who else may read each member's environment.
    pub read: Vec<Subject>,
    /// Who else may write each member's environment.
    pub write: Vec<Subject>,
    pub max_state_size: u64,
    pub lock_lease: Option<Duration>,
}

/// The name of `member`'s environment of template `template` (see
/// [`Template::environment_name`]).
pub fn personal_name(template: &str, member: &str) -> String {
    let member: String = member
        .chars()
        .map(|c| match c {
            '.' | '_' | '@' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    format!("{template}-{member}")
}

/// Whose personal environment an environment is, and the template it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    pub template: String,
    pub member: String,
    /// The member is one no longer: the environment is kept for the template's readers, and
    /// nobody writes it.
    pub former: bool,
}

impl Template {
    /// The environment name of `member`'s sandbox: `<template>-<member>`, the member's name
    /// lowercased and each `.`, `_` or `@` in it made a `-` (environment names are
    /// `[a-z0-9][a-z0-9-]*`), e.g. `sandbox-alice`, `sandbox-jo-smith` for `Jo.Smith`.
    pub fn environment_name(&self, member: &str) -> String {
        personal_name(&self.name, member)
    }

    /// `member`'s environment: owned by them, read and written by them and whom the template
    /// names, released and deleted by them; never protected, stored where environments are
    /// stored by default (never in another environment's database).
    pub fn environment(&self, member: &str) -> Environment {
        let me = Subject::User(member.to_string());
        let with_me = |others: &[Subject]| {
            let mut all = vec![me.clone()];
            all.extend(others.iter().filter(|s| **s != me).cloned());
            all
        };
        Environment {
            name: self.environment_name(member),
            line: self.line,
            owner: me.clone(),
            paths: Vec::new(),
            read: with_me(&self.read),
            write: with_me(&self.write),
            force_unlock: vec![me.clone()],
            force_write: Vec::new(),
            delete: vec![me],
            storage: None,
            max_state_size: self.max_state_size,
            max_plan_size: DEFAULT_MAX_PLAN_SIZE,
            lock_lease: self.lock_lease,
            approval: None,
            pipeline: None,
            breakglass: None,
            personal: Some(Personal {
                template: self.name.clone(),
                member: member.to_string(),
                former: false,
            }),
            write_from: Vec::new(),
            read_from: Vec::new(),
        }
    }

    /// The environment `name` of someone who is no longer a member (its database remains):
    /// read by the template's readers, written, released and deleted by nobody; `None` when
    /// the name is not one of this template's.
    pub fn former(&self, name: &str) -> Option<Environment> {
        let member = name.strip_prefix(&format!("{}-", self.name))?;
        let mut env = self.environment(member);
        env.name = name.to_string();
        env.read = self.read.clone();
        env.write = Vec::new();
        env.force_unlock = Vec::new();
        env.delete = Vec::new();
        if let Some(personal) = &mut env.personal {
            personal.former = true;
        }
        Some(env)
    }
}
