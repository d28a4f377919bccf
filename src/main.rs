//! Command line entry: parse arguments, load and validate the config, run the server.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Thread-per-core io_uring HTTP/1.1 reverse proxy and load balancer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML).
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
    /// Validate the config, print `config ok` or the errors, and exit without binding anything.
    #[arg(long)]
    check: bool,
    /// Number of worker threads (overrides `[server] workers`).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ringproxy::config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    if cli.check {
        println!("config ok");
        return ExitCode::SUCCESS;
    }
    let log_guard = ringproxy::logging::init(&config.logging);
    let result = ringproxy::server::run(config, cli.config.clone(), cli.workers.map(usize::from));
    if let Err(e) = &result {
        tracing::error!(error = %e, "ringproxy failed");
        eprintln!("error: {e}");
    }
    drop(log_guard);
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
