//! Validation of a `personal` template, and the environments made from it: one per member,
//! each name checked against every other environment's.

use std::collections::HashMap;

use super::{Named, Validator};
use crate::config::hcl::Block;
use crate::config::{Config, Subject, Template, DEFAULT_MAX_STATE_SIZE};

impl Validator {
    pub(super) fn personal(&mut self, block: &Block, name: String) -> (Template, Vec<Named>) {
        let ctx = format!("personal \"{name}\"");
        self.only_attrs(
            block,
            &ctx,
            &["members", "read", "write", "max_state_size", "lock_lease"],
        );
        for inner in &block.blocks {
            self.error(
                inner.line,
                format!(
                    "{ctx}: a personal environment is never protected, so it takes no `{}` block; declare an environment block for what needs one",
                    inner.kind
                ),
            );
        }
        if name == "prod" || name.starts_with("prod-") || name.contains("production") {
            self.error(
                block.line,
                format!("{ctx}: its environments would be named like production ({name}-<member>), and a personal environment never is one; name the template for what it is, e.g. sandbox"),
            );
        }
        let mut named = Vec::new();
        let members = self
            .subjects(block, "members", &ctx, &mut named)
            .unwrap_or_default();
        if members.is_empty() {
            self.error(
                block.line,
                format!("{ctx} has no members: add members = [\"team:NAME\"] (each member gets an environment of their own)"),
            );
        }
        if let Some(service) = members.iter().find(|s| matches!(s, Subject::Service(_))) {
            self.error(
                block.line,
                format!("{ctx}: {service} in `members`: personal environments are for people; name teams or users"),
            );
        }
        let read = self
            .subjects(block, "read", &ctx, &mut named)
            .unwrap_or_default();
        let write = self
            .subjects(block, "write", &ctx, &mut named)
            .unwrap_or_default();
        let template = Template {
            name,
            line: block.line,
            members,
            read,
            write,
            max_state_size: self.size(block, "max_state_size", &ctx, DEFAULT_MAX_STATE_SIZE),
            lock_lease: self.duration(block, "lock_lease", &ctx),
        };
        (template, named)
    }

    /// Makes an environment for each member of each template, after the declared ones; a name
    /// two of them would share is reported on the template's line.
    pub(super) fn make_personal(&mut self, config: &mut Config) {
        let mut taken: HashMap<String, String> = config
            .environments
            .iter()
            .map(|e| (e.name.clone(), format!("environment \"{}\"", e.name)))
            .collect();
        let templates = config.templates.clone();
        for template in &templates {
            let mut people: Vec<&str> = Vec::new();
            for member in &template.members {
                match member {
                    Subject::Team(team) => people.extend(
                        config
                            .teams
                            .get(team)
                            .into_iter()
                            .flatten()
                            .map(String::as_str),
                    ),
                    Subject::User(user) => people.push(user),
                    Subject::Service(_) => {}
                }
            }
            people.sort_unstable();
            people.dedup();
            for person in people {
                let env = template.environment(person);
                let whose = format!("the personal environment of {person}");
                if let Some(other) = taken.get(&env.name) {
                    self.error(
                        template.line,
                        format!(
                            "personal \"{}\": {whose} would be named \"{}\", as is {other}; rename the template or one of them",
                            template.name, env.name
                        ),
                    );
                    continue;
                }
                taken.insert(env.name.clone(), whose);
                config.environments.push(env);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, GOOD};
    use crate::config::{Config, Subject};
    use std::path::Path;

    const SANDBOX: &str = r#"
personal "sandbox" {
  members = ["team:app", "user:pat"]
  read    = ["team:platform"]
}
"#;

    #[test]
    fn every_member_gets_an_environment_of_their_own() {
        let c = Config::parse(Path::new("b.hcl"), &format!("{GOOD}{SANDBOX}")).unwrap();
        let names: Vec<&str> = c.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "prod", "sandbox-alice", "sandbox-bob", "sandbox-pat"]
        );
        let alice = c.environment("sandbox-alice").unwrap();
        assert_eq!(alice.owner, Subject::User("alice".into()));
        assert_eq!(alice.write, vec![Subject::User("alice".into())]);
        assert_eq!(
            alice.read,
            vec![
                Subject::User("alice".into()),
                Subject::Team("platform".into())
            ]
        );
        assert!(!alice.protected());
        assert_eq!(alice.personal.as_ref().unwrap().template, "sandbox");
        assert_eq!(c.declared().count(), 2);
    }

    #[test]
    fn names_of_members_are_made_environment_names() {
        let text = format!(
            "{GOOD}team \"x\" {{ members = [\"Jo.Smith\", \"a_b@c\"] }}\npersonal \"box\" {{ members = [\"team:x\"] }}\n"
        );
        let c = Config::parse(Path::new("b.hcl"), &text).unwrap();
        assert!(c.environment("box-jo-smith").is_some());
        assert!(c.environment("box-a-b-c").is_some());
    }

    #[test]
    fn a_name_taken_twice_and_a_bad_template_are_reported_with_their_lines() {
        let text = format!(
            "{GOOD}environment \"sandbox-bob\" {{ owner = \"team:app\" }}\n\
             team \"y\" {{ members = [\"Al\", \"al\"] }}\n\
             personal \"sandbox\" {{ members = [\"team:app\"] }}\n\
             personal \"box\" {{ members = [\"team:y\"] }}\n\
             personal \"ci\" {{\n  members = [\"service:ci-prod\", \"team:nobody\"]\n  approval {{}}\n}}\n\
             personal \"empty\" {{ read = [\"team:app\"] }}\n\
             personal \"prod\" {{ members = [\"team:app\"] }}\n"
        );
        let e = errors(&text);
        assert!(
            e.contains("b.hcl:22: personal \"sandbox\": the personal environment of bob would be named \"sandbox-bob\", as is environment \"sandbox-bob\""),
            "{e}"
        );
        assert!(
            e.contains("b.hcl:23: personal \"box\": the personal environment of al would be named \"box-al\", as is the personal environment of Al"),
            "{e}"
        );
        assert!(e.contains("b.hcl:24: personal \"ci\": service:ci-prod in `members`: personal environments are for people"), "{e}");
        assert!(
            e.contains("b.hcl:25: personal \"ci\": unknown principal team:nobody in `members`"),
            "{e}"
        );
        assert!(e.contains("b.hcl:26: personal \"ci\": a personal environment is never protected, so it takes no `approval` block"), "{e}");
        assert!(
            e.contains("b.hcl:28: personal \"empty\" has no members"),
            "{e}"
        );
        assert!(
            e.contains(
                "b.hcl:29: personal \"prod\": its environments would be named like production"
            ),
            "{e}"
        );
    }
}
