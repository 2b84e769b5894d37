use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use bulkhead::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; none in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.run().await {
        Ok(code) => code,
        Err(e) => {
            // Errors quote what servers and files said: shown escaped, line breaks kept.
            eprintln!(
                "error: {}",
                bulkhead::text::printable_lines(&format!("{e:#}"))
            );
            e.exit_code()
        }
    }
}
