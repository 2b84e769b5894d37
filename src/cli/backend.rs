//! `bulkhead backend ENV/NAME`: the `backend "http"` block (or `terraform init` flags) that
//! points stock terraform at one state, so that nobody types its addresses and methods by hand.
//! It prints text and reads the config when given one; it sends nothing to any server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{print_json, CliError};
use crate::changes::ChangeId;
use crate::config::Config;
use crate::state::StateName;

/// What to print, and for which state.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// The state: ENVIRONMENT/NAME, e.g. prod/network.
    address: String,
    /// The approved change the pipeline applies (an id of the same environment, e.g. prod-14).
    #[arg(long)]
    change: Option<String>,
    /// The server's address as terraform reaches it.
    #[arg(long, env = "BULKHEAD_ADDR", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// A bulkhead config to check the environment against (that it exists, whether it is
    /// protected).
    #[arg(long, short = 'c', env = "BULKHEAD_CONFIG")]
    config: Option<PathBuf>,
    /// What to print.
    #[arg(long, value_enum, default_value_t)]
    format: BackendFormat,
}

/// The forms the backend settings are printed in.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum BackendFormat {
    /// A `terraform { backend "http" { ... } }` block, for a .tf file.
    #[default]
    Hcl,
    /// One `-backend-config=KEY=VALUE` flag a line, for `terraform init`.
    Flags,
    /// The settings as a JSON object.
    Json,
}

/// The settings of terraform's `http` backend for one state.
#[derive(Debug, serde::Serialize)]
pub struct Backend {
    pub address: String,
    pub lock_address: String,
    pub unlock_address: String,
    pub lock_method: &'static str,
    pub unlock_method: &'static str,
}

impl Backend {
    /// The settings for `state` of `environment` on the server at `server`, under `change`.
    pub fn new(server: &str, environment: &str, state: &StateName, change: Option<&str>) -> Self {
        let query = change.map(|id| format!("?change={id}")).unwrap_or_default();
        let url = format!(
            "{}/v1/state/{environment}/{}{query}",
            server.trim_end_matches('/'),
            state.as_str()
        );
        Backend {
            address: url.clone(),
            lock_address: url.clone(),
            unlock_address: url,
            lock_method: "LOCK",
            unlock_method: "UNLOCK",
        }
    }

    fn settings(&self) -> [(&'static str, &str); 5] {
        [
            ("address", &self.address),
            ("lock_address", &self.lock_address),
            ("unlock_address", &self.unlock_address),
            ("lock_method", self.lock_method),
            ("unlock_method", self.unlock_method),
        ]
    }

    /// The block for a .tf file.
    pub fn hcl(&self) -> String {
        let mut out = String::from("terraform {\n  backend \"http\" {\n");
        for (key, value) in self.settings() {
            out.push_str(&format!("    {key:<14} = {}\n", quoted(value)));
        }
        out.push_str(
            "    # username and password: TF_HTTP_USERNAME=<principal> TF_HTTP_PASSWORD=<token>\n",
        );
        if self.address.starts_with("https://") {
            out.push_str(concat!(
                "    # a service with a certificate block also presents its client certificate:\n",
                "    # TF_HTTP_CLIENT_CERTIFICATE_PEM=\"$(cat runner.crt)\" TF_HTTP_CLIENT_PRIVATE_KEY_PEM=\"$(cat runner.key)\"\n",
                "    # (and TF_HTTP_CLIENT_CA_CERTIFICATE_PEM for a server certificate of your own CA)\n",
            ));
        }
        out.push_str("  }\n}\n");
        out
    }

    /// The flags for `terraform init`, one a line.
    pub fn flags(&self) -> String {
        self.settings()
            .iter()
            .map(|(key, value)| format!("-backend-config={key}={value}\n"))
            .collect()
    }
}

/// `text` as an HCL string.
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

impl BackendArgs {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let usage = CliError::Usage;
        let (environment, name) = self
            .address
            .split_once('/')
            .filter(|(env, _)| !env.is_empty())
            .ok_or_else(|| {
                usage(format!(
                    "`{}`: write ENVIRONMENT/NAME, e.g. prod/network",
                    self.address
                ))
            })?;
        let state = StateName::parse(name).map_err(usage)?;
        if !crate::config::environment_name_ok(environment) {
            return Err(usage(format!(
                "`{environment}` is not an environment name: use lowercase letters, digits and `-`"
            )));
        }
        if let Some(change) = &self.change {
            let id = ChangeId::parse(change).map_err(|e| usage(e.to_string()))?;
            if id.environment != environment {
                return Err(usage(format!(
                    "change {change} is one of {}, not of {environment}: a change is applied to the environment it was proposed for",
                    id.environment
                )));
            }
        }
        let server = self.server.trim_end_matches('/');
        let scheme_ok = server.starts_with("http://") || server.starts_with("https://");
        if !scheme_ok || server.contains(['?', '#']) {
            return Err(usage(format!(
                "--server `{server}` is not a server address: write its base URL, e.g. https://bulkhead.example.com"
            )));
        }
        if let Some(path) = &self.config {
            let config = Config::load(path).map_err(CliError::Config)?;
            let env = config.environment(environment).ok_or_else(|| {
                let known: Vec<&str> = config.declared().map(|e| e.name.as_str()).collect();
                usage(format!(
                    "there is no environment `{environment}` in {}: known environments are {}",
                    path.display(),
                    known.join(", ")
                ))
            })?;
            if env.protected() && self.change.is_none() {
                eprintln!(
                    "note: {environment} is protected: `terraform plan` works with this backend, \
                     but a write needs an approved change, which the pipeline names with \
                     --change {environment}-N"
                );
            }
        }
        let backend = Backend::new(server, environment, &state, self.change.as_deref());
        match self.format {
            BackendFormat::Hcl => print!("{}", backend.hcl()),
            BackendFormat::Flags => print!("{}", backend.flags()),
            BackendFormat::Json => print_json(&backend)?,
        }
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_carries_the_change_and_the_methods_are_terraforms() {
        let state = StateName::parse("network/core").unwrap();
        let b = Backend::new("https://bh.example/", "prod", &state, Some("prod-14"));
        let url = "https://bh.example/v1/state/prod/network/core?change=prod-14";
        assert_eq!(
            (&*b.address, &*b.lock_address, &*b.unlock_address),
            (url, url, url)
        );
        let hcl = b.hcl();
        assert!(
            hcl.contains(&format!("    address        = \"{url}\"\n")),
            "{hcl}"
        );
        assert!(hcl.contains("    lock_method    = \"LOCK\"\n"), "{hcl}");
        assert!(hcl.contains("    unlock_method  = \"UNLOCK\"\n"), "{hcl}");
        let flags = b.flags();
        assert_eq!(flags.lines().count(), 5);
        assert!(flags.contains(&format!("-backend-config=lock_address={url}\n")));
    }
}
