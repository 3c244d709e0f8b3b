//! The `app` command line. The role subcommands are not written here: [`command`] adds one
//! per entry of the role registry, and the configuration help comes from the variable table.

use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use meeting_events::roles::{self, Role};

/// Meeting system services cooperating through events on RabbitMQ.
#[derive(Debug, Parser)]
#[command(
    name = "app",
    version,
    about = "Meeting system services cooperating through events on RabbitMQ."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the command line asked for.
pub enum Parsed {
    /// `app <role>`
    Role(Role),
    /// Any other command.
    Other(Cli),
}

/// The full command: the fixed subcommands, one per role, and the variables' help.
pub fn command() -> clap::Command {
    let help = meeting_events::config::help();
    let mut cmd = Cli::command().after_help(help.clone());
    for role in roles::ALL {
        cmd = cmd.subcommand(
            clap::Command::new(role.name)
                .about(format!(
                    "{} (default port {}).",
                    role.about, role.default_port
                ))
                .after_help(help.clone()),
        );
    }
    cmd.mut_subcommand("all", |all| all.after_help(help))
}

/// Parse the process arguments; exits with usage on error, as clap does.
pub fn parse() -> Parsed {
    use clap::FromArgMatches;
    let matches = command().get_matches();
    if let Some(role) = matches
        .subcommand_name()
        .and_then(|name| roles::find(name).ok())
    {
        return Parsed::Role(role);
    }
    Parsed::Other(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process, each on its default port with its own queue, consumer
    /// and store (for laptops and demos). SERVICE_NAME, MQ_QUEUE, MQ_BINDINGS, HTTP_PORT and
    /// DATABASE_URL come from config/<role>.toml or the defaults, not the environment.
    All {
        /// Development mode: without AUTH_JWT_SECRET, sign and check tokens with a fixed
        /// development key, and listen on 127.0.0.1 only.
        #[arg(long)]
        dev: bool,
    },
    /// Print a bearer token for a user, signed with AUTH_JWT_SECRET.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Sign with the development key of `app all --dev` when AUTH_JWT_SECRET is unset.
        #[arg(long)]
        dev: bool,
    },
    /// Print the OpenAPI 3.1 document of every role's HTTP API as one origin serves them
    /// (each role serves its own part at /openapi.json); `openapi.json` in the repository.
    Openapi,
    /// Walk one meeting through the whole chain against running services (create, open the
    /// election item, nominate, start, three votes, close, result), printing each step and
    /// every event seen on the bus.
    Walk(crate::commands::walk::WalkArgs),
    /// Publish or watch events on the exchange.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Inspect and replay a service's dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Check the broker's exchange and queues against what the roles declare.
    #[command(subcommand)]
    Topology(TopologyCommand),
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Wrap DATA (a JSON object) in an envelope and publish it with ROUTING_KEY as its type.
    Publish {
        /// Send DATA's bytes as they are, without an envelope (to test parking).
        #[arg(long)]
        raw: bool,
        /// The envelope's `event_version`: DATA is in that version of its type (default: the
        /// type's newest, or 1 for a type outside the catalogue).
        #[arg(long)]
        event_version: Option<u32>,
        routing_key: String,
        data: String,
    },
    /// Print every event matching the bindings (default `#`): time, type, producer, id, data.
    Tail { bindings: Vec<String> },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per parked message: id, type, attempts, time, reason and a body preview.
    List {
        /// The service's queue name (its SERVICE_NAME / MQ_QUEUE), e.g. election-service.
        #[arg(long)]
        service: String,
    },
    /// Put parked messages back on the service's queue, their retry count reset.
    Replay {
        #[arg(long)]
        service: String,
        /// The parked message's id (as `dlq list` shows it).
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every parked message.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Print the rabbitmqctl commands that give each role its own broker user, allowed to
    /// declare and use its own queues and to publish only the routing keys it produces
    /// (for `MQ_TRUST=strict`). Passwords are read from $<ROLE>_BROKER_PASSWORD.
    Permissions {
        /// The virtual host.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// Declare the exchange of each `MQ_INGRESS` producer (`<MQ_EXCHANGE>.from.<user>`) and
    /// bind it into the shared exchange for the routing keys of the roles it publishes for,
    /// and the shared exchange back into it. Run as a broker user allowed to configure it
    /// (an administrator); the producer itself gets no rights on the shared exchange.
    Ingress,
    /// Check the exchange and each role's queue, retry queues and dead-letter queue exist
    /// with the expected arguments; exit status 1 if anything differs.
    Verify {
        /// Only this role (default: all of them).
        #[arg(long, value_parser = roles::find)]
        role: Option<Role>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn every_role_is_a_subcommand_with_the_variables_in_its_help() {
        let mut cmd = command();
        for role in roles::ALL {
            let sub = cmd
                .find_subcommand_mut(role.name)
                .unwrap_or_else(|| panic!("no subcommand for {role}"));
            let help = sub.render_long_help().to_string();
            assert!(help.contains("AMQP_URL"), "{help}");
            assert!(help.contains(&role.default_port.to_string()), "{help}");
        }
    }
}
