//! `app`: parse the command line, start logging, dispatch. The roles live in the service
//! library; the other commands in [`commands`].

mod cli;
mod commands;

use std::process::ExitCode;

use cli::{Command, DlqCommand, EventsCommand, Parsed, TopologyCommand};
use commands::{operator, Failure};

fn main() -> ExitCode {
    let parsed = cli::parse();
    // The default service.name of the spans: the role's SERVICE_NAME; the whole system when
    // one process runs every role; the operator tool otherwise.
    let service = match &parsed {
        Parsed::Role(role) => std::env::var(meeting_events::config::name_of("mq.service_name"))
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| role.service_name()),
        Parsed::Other(cli) if matches!(cli.command, Command::All { .. }) => {
            "meeting-system".to_string()
        }
        Parsed::Other(_) => "meeting-events-cli".to_string(),
    };
    let _telemetry = match meeting_events::telemetry::init("info", &service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match parsed {
            Parsed::Role(role) => commands::run_role(role).await,
            Parsed::Other(cli) => dispatch(cli.command).await,
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

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::All { dev } => commands::run_all(dev).await,
        Command::Token { user, ttl, dev } => {
            commands::token(&user, ttl, dev).map(|t| println!("{t}"))
        }
        Command::Walk(args) => commands::walk::run(args).await,
        Command::Openapi => commands::openapi().map(|doc| println!("{doc}")),
        Command::Events(EventsCommand::Publish {
            raw,
            event_version,
            routing_key,
            data,
        }) => Ok(operator::publish(raw, event_version, &routing_key, &data).await?),
        Command::Events(EventsCommand::Tail { bindings }) => Ok(operator::tail(&bindings).await?),
        Command::Dlq(DlqCommand::List { service }) => Ok(operator::dlq_list(&service).await?),
        Command::Dlq(DlqCommand::Replay { service, id, all }) => {
            Ok(operator::dlq_replay(&service, id.as_deref(), all).await?)
        }
        Command::Topology(TopologyCommand::Verify { role }) => operator::verify_command(role).await,
        Command::Topology(TopologyCommand::Ingress) => operator::ingress().await,
        Command::Topology(TopologyCommand::Permissions { vhost }) => {
            operator::permissions(&vhost).map(|lines| println!("{lines}"))
        }
    }
}
