//! Where production is written from, and whom the server believes about where requests come
//! from: a production environment whose states can be changed from any network, and a
//! `trusted_proxies` that trusts every address (then anyone names their own address with
//! `X-Forwarded-For`, and every network list is void).

use super::{is_production, Finding, Severity};
use crate::config::{Config, Environment, Subject};

pub fn check(config: &Config, file: &str, out: &mut Vec<Finding>) {
    for env in config.environments.iter().filter(|e| is_production(e)) {
        if !(Environment::from_anywhere(&env.write_from)
            && Environment::from_anywhere(&env.read_from))
        {
            continue;
        }
        // People among the writers are the human-writes check's finding.
        let uncertified: Vec<String> = env
            .write
            .iter()
            .filter(|w| match w {
                Subject::Service(name) => config
                    .services
                    .get(name)
                    .is_none_or(|s| s.certificate.is_none()),
                _ => false,
            })
            .map(ToString::to_string)
            .collect();
        let certificates = if uncertified.is_empty() {
            String::new()
        } else {
            format!(
                ", and bind its writers to their runner with a `certificate` block in their service ({} has none)",
                uncertified.join(", ")
            )
        };
        out.push(Finding {
            id: "write-from-anywhere",
            severity: Severity::Warning,
            file: file.to_string(),
            line: Some(env.line),
            message: format!(
                "production environment {} can be written from any network: its writers' tokens work from any machine that holds them",
                env.name
            ),
            fix: format!(
                "add write_from = [\"10.20.0.0/16\"] (your runners' network) to environment \"{}\"{certificates}",
                env.name
            ),
        });
    }
    if let Some(everyone) = config
        .server
        .trusted_proxies
        .iter()
        .find(|n| n.prefix_len() == 0)
    {
        out.push(Finding {
            id: "trusted-proxies-anywhere",
            severity: Severity::Error,
            file: file.to_string(),
            line: None,
            message: format!(
                "server.trusted_proxies holds {everyone}: every client can name its own address in X-Forwarded-For, and write_from and read_from check nothing"
            ),
            fix: "list only the addresses of your load balancers and proxies in trusted_proxies"
                .into(),
        });
    }
}
