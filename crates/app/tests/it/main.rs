//! Integration tests against a real RabbitMQ (`AMQP_URL`, or the throwaway broker that
//! `scripts/test.sh` starts). One binary; each test has its own exchange and queues.

mod helpers;
mod hostile;

mod adversary;
mod api_errors;
mod browser;
mod browser_seats;
mod confirms;
mod contract;
mod evolution;
mod faults;
mod faults_consumer;
mod faults_store;
mod flow;
mod http_contract;
mod interop;
mod live;
mod live_auth;
mod live_http;
mod messaging;
mod operator;
mod permissions;
mod process;
mod replicas;
mod scale;
mod traces;
mod trust;
mod unrouted;
