//! Typed readers of attributes: each reads one attribute as the type it must have, reports a
//! value of another type at its line, and lets validation carry on.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;

use super::{Named, Validator};
use crate::config::hcl::{Attr, Block, Literal};
use crate::config::units::{parse_duration, parse_size};
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
            match Named::parse(&text, line, key) {
                Ok(n) => {
                    out.push(n.subject.clone());
                    named.push(n);
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

    /// A size in bytes (see [`parse_size`]); `default` where absent or reported.
    pub(super) fn size(&mut self, block: &Block, key: &str, ctx: &str, default: u64) -> u64 {
        let Some(a) = attr(block, key) else {
            return default;
        };
        match parse_size(&a.value) {
            Ok(n) => n,
            Err(problem) => {
                self.error(a.line, format!("{ctx}: {key} {problem}"));
                default
            }
        }
    }

    /// A whole number from 1 to `max`; `None` where absent or reported as `problem`.
    pub(super) fn whole_number(
        &mut self,
        block: &Block,
        key: &str,
        max: u64,
        problem: impl FnOnce() -> String,
    ) -> Option<u64> {
        let a = attr(block, key)?;
        match a.value {
            Literal::Number(n) if n >= 1.0 && n.fract() == 0.0 && n <= max as f64 => Some(n as u64),
            _ => {
                self.error(a.line, problem());
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

    /// The networks of a list attribute (`["10.20.0.0/16", "192.0.2.7"]`), an address alone
    /// being a network of one. One with bits set past its prefix is refused rather than
    /// guessed at: `10.20.1.0/16` may be a typo of `10.20.1.0/24`.
    pub(super) fn networks(&mut self, block: &Block, key: &str, ctx: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (text, line) in self.string_list(block, key, ctx) {
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) if net.trunc() == net => out.push(net),
                Ok(net) => self.error(
                    line,
                    format!(
                        "{ctx}: `{key}`: \"{text}\" has bits set past its /{}: write \"{}\" for the network, or /{} for the address alone",
                        net.prefix_len(),
                        net.trunc(),
                        net.max_prefix_len()
                    ),
                ),
                Err(_) => self.error(
                    line,
                    format!("{ctx}: `{key}`: \"{text}\" is not a network: write an address or ADDRESS/PREFIX, e.g. \"10.20.0.0/16\""),
                ),
            }
        }
        out
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

    /// The strings of a list attribute, without their lines.
    pub(super) fn strings(&mut self, block: &Block, key: &str, ctx: &str) -> Vec<String> {
        self.string_list(block, key, ctx)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
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

/// The line of an attribute, or of its block where the attribute is absent.
pub(super) fn line_of(block: &Block, key: &str) -> usize {
    attr(block, key).map_or(block.line, |a| a.line)
}
