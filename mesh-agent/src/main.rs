//! `mesh-agent`: Weft's node agent. All wiring is in `app`.

use std::process::ExitCode;

use clap::Parser as _;
use mesh_agent::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("invalid --log filter {:?}: {e}; using info", cli.log);
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(mesh_agent::app::run(args.into_config())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("mesh-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
