//! Typed readers of attributes: each reads one attribute as the type it must have, reports a
//! value of another type at its line, and lets validation carry on.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Named, Validator};
use crate::config::hcl::{Attr, Block, Literal};
use crate::config::units::parse_duration;
use crate::config::Subject;

impl Validator {
    pub(super) fn subjects(
        &mut self,
        block: &Block,
        key: &'static str,
        ctx: &str,
        named: &mut Vec<Named>,
    ) -> Option<Vec<Subject>> {
        attr(block, key)?;
        let mut out = Vec::new();
        for (text, line) in self.string_list(block, key, ctx) {
            match Subject::parse(&text) {
                Ok(s) => {
                    named.push(Named {
                        subject: s.clone(),
                        line,
                        attr: key,
                    });
                    out.push(s);
                }
                Err(problem) => self.error(line, format!("{ctx}: in `{key}`: {problem}")),
            }
        }
        Some(out)
    }

    pub(super) fn duration(&mut self, block: &Block, key: &str, ctx: &str) -> Option<Duration> {
        let a = attr(block, key)?;
        let text = self.string(block, key, ctx)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(problem) => {
                self.error(a.line, format!("{ctx}: {key} {problem}"));
                None
            }
        }
    }

    pub(super) fn only_attrs(&mut self, block: &Block, ctx: &str, allowed: &[&str]) {
        for a in &block.attrs {
            if !allowed.contains(&a.name.as_str()) {
                let hint = if allowed.is_empty() {
                    "it takes no attributes".to_string()
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                self.error(
                    a.line,
                    format!("unknown attribute `{}` in {ctx}: {hint}", a.name),
                );
            }
        }
        let mut seen = BTreeMap::new();
        for a in &block.attrs {
            if let Some(first) = seen.insert(a.name.as_str(), a.line) {
                self.error(
                    a.line,
                    format!(
                        "duplicate attribute `{}` in {ctx} (first on line {first})",
                        a.name
                    ),
                );
            }
        }
    }

    pub(super) fn string(&mut self, block: &Block, key: &str, ctx: &str) -> Option<String> {
        let a = attr(block, key)?;
        match &a.value {
            Literal::String(s) => Some(s.clone()),
            other => {
                self.error(
                    a.line,
                    format!("{ctx}: `{key}` must be a string, not {}", other.kind()),
                );
                None
            }
        }
    }

    pub(super) fn string_list(
        &mut self,
        block: &Block,
        key: &str,
        ctx: &str,
    ) -> Vec<(String, usize)> {
        let Some(a) = attr(block, key) else {
            return Vec::new();
        };
        match &a.value {
            Literal::List(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Literal::String(s) => out.push((s.clone(), a.line)),
                        other => self.error(
                            a.line,
                            format!("{ctx}: `{key}` must hold strings, not {}", other.kind()),
                        ),
                    }
                }
                out
            }
            other => {
                self.error(
                    a.line,
                    format!(
                        "{ctx}: `{key}` must be a list of strings, not {}",
                        other.kind()
                    ),
                );
                Vec::new()
            }
        }
    }
}

pub(super) fn attr<'a>(block: &'a Block, key: &str) -> Option<&'a Attr> {
    block.attrs.iter().find(|a| a.name == key)
}
