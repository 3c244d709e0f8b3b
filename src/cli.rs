//! The `app` command line.

use std::time::Duration;

use clap::{Parser, Subcommand};

const VARIABLES_HELP: &str = "\
Configuration (environment variables; also config/default.toml and config/<role>.toml,
keys in lower case; CONFIG_DIR moves that folder):
  AMQP_URL              broker URI, amqp://user:pass@host:port/vhost (amqps:// for TLS)
                        [default: amqp://guest:guest@localhost:5672/%2f]
  MQ_EXCHANGE           shared exchange [default: events]
  MQ_EXCHANGE_TYPE      exchange type [default: topic]
  SERVICE_NAME          producer name in the envelope, default queue name [default: per role]
  MQ_QUEUE              this service's durable queue [default: SERVICE_NAME]
  MQ_BINDINGS           comma-separated routing keys bound to the queue [default: per role]
  MQ_PREFETCH           consumer prefetch [default: 64]
  MQ_QUEUE_TYPE         classic or quorum [default: classic]
  MQ_RETRY_DELAYS       delays before each retry of a failed event, then it is parked
                        [default: 1s,5s,30s]
  HTTP_ADDR / HTTP_PORT listen address / port [default: 0.0.0.0 / per role]
  DATABASE_URL          the role's store [default: sqlite://data/<role>.db]
  AUTH_JWT_SECRET       HS256 key for bearer tokens (required, except under `app all`)
  CORS_ALLOWED_ORIGINS  comma-separated browser origins allowed to call the API
  SHUTDOWN_GRACE        time to finish work in hand and flush the outbox [default: 10s]
  LOG_FORMAT            text or json [default: text]; RUST_LOG sets the level [default: info]";

/// Meeting system services cooperating through events on RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "app", version, about, after_help = VARIABLES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the meeting service (default port 8081).
    #[command(after_help = VARIABLES_HELP)]
    Meeting,
    /// Run the election service (default port 8082).
    #[command(after_help = VARIABLES_HELP)]
    Election,
    /// Run the voting service (default port 8083).
    #[command(after_help = VARIABLES_HELP)]
    Voting,
    /// Run the permission service (default port 8084).
    #[command(after_help = VARIABLES_HELP)]
    Permission,
    /// Run all four services in one process, each on its default port with its own queue,
    /// consumer and store (for laptops and demos). SERVICE_NAME, MQ_QUEUE, MQ_BINDINGS,
    /// HTTP_PORT and DATABASE_URL come from config/<role>.toml or the defaults, not the
    /// environment; AUTH_JWT_SECRET falls back to a development key.
    #[command(after_help = VARIABLES_HELP)]
    All,
    /// Print a bearer token for a user, signed with AUTH_JWT_SECRET.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// How long the token is valid, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Walk one meeting through the whole chain against running services (create, open the
    /// election item, nominate, start, three votes, close, result), printing each step and
    /// every event seen on the bus.
    Walk(crate::commands::walk::WalkArgs),
    /// Benchmarks against the configured broker: our publisher vs raw lapin, the outbox
    /// relay, the meeting → permission chain, the guide's fast-track pattern, and memory.
    Bench(crate::commands::bench::BenchArgs),
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
    /// Check the exchange and each role's queue, retry queues and dead-letter queue exist
    /// with the expected arguments; exit status 1 if anything differs.
    Verify {
        /// Only this role (default: all four).
        #[arg(long)]
        role: Option<crate::role::Role>,
    },
}
