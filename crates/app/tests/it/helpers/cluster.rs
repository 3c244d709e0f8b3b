//! A cluster of the test's own for the scale-out tests: three RabbitMQ nodes and a
//! PostgreSQL instance, from `scripts/cluster.sh`.

use std::process::Command;

use super::broker::{run_script, script_output, scripts};

/// A cluster of the test's own: three RabbitMQ nodes and a PostgreSQL instance, from
/// `scripts/cluster.sh`.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Every node, comma-separated, node 1 first.
    pub amqp_url: String,
    /// The PostgreSQL instance, without a database.
    pub postgres: String,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with("start")
    }

    /// Each node in a network namespace of its own, so that one can be partitioned from
    /// the others (`scripts/cluster.sh start-netns`; needs root).
    pub fn start_in_namespaces() -> Self {
        Self::start_with("start-netns")
    }

    fn start_with(command: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cluster")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let out = cluster_script(&[command, &dir.path().display().to_string()]);
        let value = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {key}=")))
                .expect(key)
                .trim_matches('\'')
                .to_string()
        };
        let (amqp_url, postgres) = (value("AMQP_URL"), value("TEST_POSTGRES_URL"));
        let postgres = postgres[..postgres.rfind('/').expect("a database")].to_string();
        Self {
            dir,
            amqp_url,
            postgres,
        }
    }

    /// Node `n`'s own URL (1–3).
    pub fn node_url(&self, n: usize) -> String {
        self.amqp_url
            .split(',')
            .nth(n - 1)
            .expect("node")
            .to_string()
    }

    /// SIGKILL node `n`, as a crash.
    pub async fn kill_node(&self, n: usize) {
        self.script(&["kill-node", &n.to_string()]).await;
    }

    pub async fn restart_node(&self, n: usize) {
        self.script(&["restart-node", &n.to_string()]).await;
    }

    /// Cut node `n`'s cluster link: its clients still reach it (`start_in_namespaces`).
    pub async fn partition(&self, n: usize) {
        self.script(&["partition", &n.to_string()]).await;
    }

    pub async fn heal(&self, n: usize) {
        self.script(&["heal", &n.to_string()]).await;
    }

    /// Node `n`'s boot state and, while it boots, where its boot waits.
    pub async fn boot_state(&self, n: usize) -> String {
        self.script(&["boot-state", &n.to_string()]).await
    }

    /// The named client connections as node `n` lists them for its side of the cluster:
    /// (the node address the client reached, the connection's name).
    pub async fn connections(&self, n: usize) -> Vec<(String, String)> {
        self.script(&["connections", &n.to_string()])
            .await
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(host, name)| (host.to_string(), name.to_string()))
            .collect()
    }

    /// Whether node `n` serves (a paused minority node does not).
    pub async fn running(&self, n: usize) -> bool {
        self.script(&["running", &n.to_string()]).await == "true"
    }

    /// Node `n`'s address in its URL.
    pub fn node_host(&self, n: usize) -> String {
        let url = self.node_url(n);
        let after = &url[url.find('@').expect("user in the URL") + 1..];
        after[..after.find(':').expect("a port")].to_string()
    }

    async fn script(&self, args: &[&str]) -> String {
        let dir = self.dir.path().display().to_string();
        let mut all = vec![args[0], dir.as_str()];
        all.extend(&args[1..]);
        run_script(scripts().join("cluster.sh"), &all).await
    }

    /// The node leading a quorum queue.
    pub fn leader(&self, queue: &str) -> usize {
        cluster_script(&["leader", &self.dir.path().display().to_string(), queue])
            .parse()
            .expect("a node number")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("cluster.sh"))
            .args(["stop", &self.dir.path().display().to_string()])
            .status();
    }
}

fn cluster_script(args: &[&str]) -> String {
    script_output("cluster.sh", args)
}
