//! `app`: parse the command line, start logging, dispatch. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;
use meeting_events::cli::{Cli, Command, DlqCommand, EventsCommand, TopologyCommand};
use meeting_events::commands::operator;
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
            Command::Bench(args) => commands::bench::run(args).await.map_err(Failure::from),
            Command::Events(EventsCommand::Publish {
                raw,
                routing_key,
                data,
            }) => operator::publish(raw, &routing_key, &data)
                .await
                .map_err(Failure::from),
            Command::Events(EventsCommand::Tail { bindings }) => {
                operator::tail(&bindings).await.map_err(Failure::from)
            }
            Command::Dlq(DlqCommand::List { service }) => {
                operator::dlq_list(&service).await.map_err(Failure::from)
            }
            Command::Dlq(DlqCommand::Replay { service, id, all }) => {
                operator::dlq_replay(&service, id.as_deref(), all)
                    .await
                    .map_err(Failure::from)
            }
            Command::Topology(TopologyCommand::Verify { role }) => {
                let targets = operator::verify_targets(role)?;
                match operator::verify(&targets).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Failure::Other(anyhow::anyhow!(
                        "the topology differs from what the roles declare"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
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
