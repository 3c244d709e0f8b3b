//! `app`: parse the command line, start logging, dispatch. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use meeting_events::cli::{Cli, Command};
use meeting_events::commands::{self, Failure};
use meeting_events::role::Role;

fn main() -> ExitCode {
    let cli = Cli::parse();
    meeting_events::telemetry::init_logs("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), Failure> = runtime.block_on(async {
        match cli.command {
            Command::Meeting => commands::run_role(Role::Meeting).await,
            Command::Election => commands::run_role(Role::Election).await,
            Command::Voting => commands::run_role(Role::Voting).await,
            Command::Permission => commands::run_role(Role::Permission).await,
            Command::All => commands::run_all().await,
            Command::Token { user, ttl } => commands::token(&user, ttl).map(|t| println!("{t}")),
            Command::Walk(args) => commands::walk::run(args).await.map_err(Failure::from),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
