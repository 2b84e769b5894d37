//! Validation of a `notify` block: its URL, its format, the events and environments it names,
//! where its secret comes from, and its retry settings. The environments it names are checked
//! once every block is read ([`Validator::notify_environments`]), since they may come after it.

use super::attrs::{attr, line_of};
use super::Validator;
use crate::config::hcl::{Block, Literal};
use crate::config::model::ATTEMPTS_MAX;
use crate::config::{Environment, Notify, NotifyEvent, NotifyFormat, Retry, SecretSource};

/// A notify block, and the environments it named with their line, to check against the
/// environments declared.
pub(super) struct Declared {
    pub(super) notify: Notify,
    pub(super) named: Option<Vec<(String, usize)>>,
}

impl Validator {
    pub(super) fn notify(&mut self, block: &Block, name: String) -> Declared {
        let ctx = format!("notify \"{name}\"");
        self.only_attrs(
            block,
            &ctx,
            &[
                "url",
                "format",
                "events",
                "environments",
                "secret_file",
                "secret_env",
                "retry_first",
                "retry_max",
                "max_attempts",
                "max_age",
                "timeout",
            ],
        );
        for inner in &block.blocks {
            self.error(
                inner.line,
                format!(
                    "unexpected block `{}` in {ctx}: it takes attributes only",
                    inner.kind
                ),
            );
        }
        let url = self.notify_url(block, &ctx);
        let format = match self.string(block, "format", &ctx).as_deref() {
            None | Some("json") => NotifyFormat::Json,
            Some("slack") => NotifyFormat::Slack,
            Some(other) => {
                self.error(
                    line_of(block, "format"),
                    format!("{ctx}: format \"{other}\" is not known: use \"json\" or \"slack\""),
                );
                NotifyFormat::Json
            }
        };
        let events = self.notify_events(block, &ctx);
        let named =
            attr(block, "environments").map(|_| self.string_list(block, "environments", &ctx));
        let secret = self.notify_secret(block, &ctx, format);
        let retry = self.retry(block, &ctx);
        Declared {
            notify: Notify {
                name,
                line: block.line,
                url,
                format,
                events,
                environments: Vec::new(),
                secret,
                retry,
            },
            named,
        }
    }

    fn notify_url(&mut self, block: &Block, ctx: &str) -> String {
        let Some(text) = self.string(block, "url", ctx) else {
            if attr(block, "url").is_none() {
                self.error(
                    block.line,
                    format!(
                        "{ctx} needs a url: where the notifications are sent (http:// or https://)"
                    ),
                );
            }
            return String::new();
        };
        let line = line_of(block, "url");
        match reqwest::Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
            Ok(url) => self.error(
                line,
                format!(
                    "{ctx}: url must be an http:// or https:// URL with a host, not {}:",
                    url.scheme()
                ),
            ),
            // The text itself is not repeated: a Slack webhook's URL is its secret.
            Err(e) => self.error(line, format!("{ctx}: url is not a URL ({e})")),
        }
        text
    }

    fn notify_events(&mut self, block: &Block, ctx: &str) -> Vec<NotifyEvent> {
        if attr(block, "events").is_none() {
            return NotifyEvent::ALL.to_vec();
        }
        let mut events = Vec::new();
        for (text, line) in self.string_list(block, "events", ctx) {
            match NotifyEvent::parse(&text) {
                Some(event) if !events.contains(&event) => events.push(event),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
                    self.error(
                        line,
                        format!(
                            "{ctx}: unknown event \"{text}\": known events are {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        let empty = attr(block, "events")
            .is_some_and(|a| matches!(&a.value, Literal::List(items) if items.is_empty()));
        if empty {
            self.error(
                line_of(block, "events"),
                format!("{ctx}: events is empty, so it would never be told anything: name some, or leave events out for all"),
            );
        }
        events
    }

    fn notify_secret(
        &mut self,
        block: &Block,
        ctx: &str,
        format: NotifyFormat,
    ) -> Option<SecretSource> {
        let file = self.string(block, "secret_file", ctx);
        let env = self.string(block, "secret_env", ctx);
        match (file, env) {
            (Some(_), Some(_)) => {
                self.error(
                    line_of(block, "secret_env"),
                    format!("{ctx}: set secret_file or secret_env, not both: the secret must come from one place"),
                );
                None
            }
            (Some(file), None) => Some(SecretSource::File(self.base.join(file))),
            (None, Some(var)) if var.is_empty() => {
                self.error(
                    line_of(block, "secret_env"),
                    format!("{ctx}: secret_env must name an environment variable"),
                );
                None
            }
            (None, Some(var)) => Some(SecretSource::Env(var)),
            (None, None) => {
                if format == NotifyFormat::Json
                    && attr(block, "secret_file").is_none()
                    && attr(block, "secret_env").is_none()
                {
                    self.error(
                        block.line,
                        format!("{ctx}: a json receiver needs the secret its bodies are signed with: set secret_file (a file holding it) or secret_env (an environment variable of the server)"),
                    );
                }
                None
            }
        }
    }

    fn retry(&mut self, block: &Block, ctx: &str) -> Retry {
        let default = Retry::default();
        let first = self
            .duration(block, "retry_first", ctx)
            .unwrap_or(default.first);
        let max = self
            .duration(block, "retry_max", ctx)
            .unwrap_or(default.max.max(first));
        if max < first {
            self.error(
                line_of(block, "retry_max"),
                format!("{ctx}: retry_max is shorter than retry_first: the waits between attempts grow from retry_first up to retry_max"),
            );
        }
        let attempts = self
            .whole_number(block, "max_attempts", ATTEMPTS_MAX, || {
                format!(
                    "{ctx}: max_attempts must be a whole number from 1 to {ATTEMPTS_MAX} (default {})",
                    default.attempts
                )
            })
            .map_or(default.attempts, |n| n as u32);
        let max_age = self
            .duration(block, "max_age", ctx)
            .unwrap_or(default.max_age);
        let timeout = self
            .duration(block, "timeout", ctx)
            .unwrap_or(default.timeout);
        Retry {
            first,
            max,
            attempts,
            max_age,
            timeout,
        }
    }

    /// The environments a notify block is told about: those it names, each checked against
    /// the config's, or every one.
    pub(super) fn notify_environments(
        &mut self,
        declared: Declared,
        environments: &[Environment],
    ) -> Notify {
        let Declared { mut notify, named } = declared;
        notify.environments = match named {
            None => environments.iter().map(|e| e.name.clone()).collect(),
            Some(named) => {
                let mut out: Vec<String> = Vec::new();
                for (name, line) in named {
                    if environments.iter().any(|e| e.name == name) {
                        if !out.contains(&name) {
                            out.push(name);
                        }
                    } else {
                        let known: Vec<&str> =
                            environments.iter().map(|e| e.name.as_str()).collect();
                        self.error(
                            line,
                            format!(
                                "notify \"{}\": there is no environment \"{name}\": known environments are {}",
                                notify.name,
                                if known.is_empty() { "none".to_string() } else { known.join(", ") }
                            ),
                        );
                    }
                }
                out
            }
        };
        notify
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{errors, GOOD};
    use crate::config::{Config, NotifyEvent, NotifyFormat, SecretSource};
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn a_notify_block_is_read_with_its_defaults() {
        let text = format!(
            "{GOOD}\nnotify \"ops\" {{\n  url = \"https://hooks.example.com/x\"\n  secret_env = \"HOOK_SECRET\"\n  environments = [\"prod\"]\n  retry_first = \"100ms\"\n}}\nnotify \"chat\" {{\n  url = \"https://hooks.slack.com/services/T/B/X\"\n  format = \"slack\"\n  events = [\"change.created\", \"state.refused\"]\n}}\n"
        );
        let c = Config::parse(Path::new("etc/b.hcl"), &text).unwrap();
        let ops = &c.notify[0];
        assert_eq!(ops.format, NotifyFormat::Json);
        assert_eq!(ops.events, NotifyEvent::ALL.to_vec());
        assert_eq!(ops.environments, vec!["prod".to_string()]);
        assert_eq!(ops.secret, Some(SecretSource::Env("HOOK_SECRET".into())));
        assert_eq!(ops.retry.first, Duration::from_millis(100));
        assert_eq!(ops.retry.max, Duration::from_secs(300));
        let chat = &c.notify[1];
        assert_eq!(chat.format, NotifyFormat::Slack);
        assert_eq!(
            chat.environments,
            vec!["dev".to_string(), "prod".to_string()]
        );
        assert!(chat.wants(NotifyEvent::StateRefused, "dev"));
        assert!(!chat.wants(NotifyEvent::ChangeApplied, "prod"));
        assert_eq!(chat.secret, None);
        assert_eq!(chat.url_shown(), "https://hooks.slack.com/…");
    }

    #[test]
    fn every_problem_of_a_notify_block_is_reported_at_its_line() {
        let text = format!(
            "{GOOD}notify \"ops\" {{\n  url = \"ftp://example.com/x\"\n  format = \"xml\"\n  events = [\"change.created\", \"change.exploded\"]\n  environments = [\"qa\"]\n  retry_first = \"1m\"\n  retry_max = \"1s\"\n}}\nnotify \"bare\" {{}}\n"
        );
        let e = errors(&text);
        let line = |n: usize| format!("b.hcl:{}: ", GOOD.lines().count() + n);
        assert!(
            e.contains(&format!(
                "{}notify \"ops\": url must be an http:// or https:// URL",
                line(2)
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "{}notify \"ops\": format \"xml\" is not known",
                line(3)
            )),
            "{e}"
        );
        assert!(e.contains(&format!("{}notify \"ops\": unknown event \"change.exploded\": known events are change.created, change.approved", line(4))), "{e}");
        assert!(e.contains(&format!("{}notify \"ops\": there is no environment \"qa\": known environments are dev, prod", line(5))), "{e}");
        assert!(
            e.contains(&format!(
                "{}notify \"ops\": retry_max is shorter than retry_first",
                line(7)
            )),
            "{e}"
        );
        assert!(
            e.contains("notify \"ops\": a json receiver needs the secret"),
            "{e}"
        );
        assert!(e.contains("notify \"bare\" needs a url"), "{e}");
    }
}
