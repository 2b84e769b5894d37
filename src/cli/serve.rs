//! `bulkhead serve`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::{CliError, ConfigArg};
use crate::http::{self, App};
use crate::operations::OpenError;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Listen on this address instead of the config's `server.listen` (port 0 picks a free one).
    #[arg(long)]
    listen: Option<String>,
}

impl ServeArgs {
    pub async fn run(self) -> Result<ExitCode, CliError> {
        let mut config = self.config.load()?;
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        let listen = config.server.listen.clone();
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        crate::operations::notify::check_secrets(&config)
            .map_err(|e| CliError::Usage(format!("{e}\nThe server did not start.")))?;
        // The certificate, key, authorities and revocation lists are read now, so that one
        // that cannot be used stops the server before it says it listens.
        if let Some(tls) = &config.server.tls {
            http::check_tls(tls)
                .map_err(|e| CliError::Usage(format!("{e}\nThe server did not start.")))?;
        }
        // Before the databases open: every connection and database file is an open file.
        http::connections::raise_open_file_limit();
        let app = App::open(config).await.map_err(|e| match e {
            OpenError::Policy(e) => CliError::Usage(format!(
                "{e}\nThe policies are invalid: the server did not start."
            )),
            OpenError::Oidc(e) => CliError::Usage(format!(
                "{e}\nAn OIDC key set is unusable: the server did not start."
            )),
            other => CliError::Failed(other.into()),
        })?;
        let listener = std::net::TcpListener::bind(&listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        // Before the address is announced: a SIGTERM from then on takes the graceful path,
        // which writes the audit checkpoints.
        let shutdown = shutdown_signal();
        // The one line on stdout: scripts and tests read the address from it.
        println!("bulkhead listening on {scheme}://{addr}");
        let _ = std::io::stdout().flush();
        tracing::info!(%addr, "serving");
        http::serve(app, listener, shutdown)
            .await
            .map_err(|e| match e {
                e @ http::StartError::Notify(_) => {
                    CliError::Usage(format!("{e}\nThe server did not start."))
                }
                other => CliError::Failed(other.into()),
            })?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Completes on Ctrl-C or SIGTERM. SIGTERM's handler is installed now, not when first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let term = async {
            match term {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("shutting down");
    }
}
