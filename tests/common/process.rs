//! `kilovolt-db` processes, as users run them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server binary under test.
pub const SERVER: &str = env!("CARGO_BIN_EXE_kilovolt-db");
/// The client binary under test.
pub const CLI: &str = env!("CARGO_BIN_EXE_kilovolt-cli");

/// A `kilovolt-db` process on an ephemeral loopback port; killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// The address it listens on.
    pub addr: String,
    /// Its log lines.
    pub log: mpsc::Receiver<String>,
    /// Its listening line (the addresses it bound).
    pub listening: String,
}

impl Server {
    /// Starts the binary on an ephemeral loopback port.
    pub fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(extra);
        Server::launch(cmd)
    }

    /// Runs `cmd` and waits (with a deadline) for its listening line, which
    /// names the address it bound.
    pub fn launch(cmd: Command) -> Server {
        Server::launch_with_startup_log(cmd).0
    }

    /// [`Server::launch`], returning also the log lines before the
    /// listening line (what the node said while it started).
    pub fn launch_with_startup_log(mut cmd: Command) -> (Server, Vec<String>) {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("server starts");
        let (tx, log) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup = Vec::new();
        let line = loop {
            let line = wait_for_line(&log, "");
            if line.contains("listening") {
                break line;
            }
            startup.push(line);
        };
        let addr = field(&line, "listen=").expect("the listening line names the address");
        assert!(line.contains("node_id="), "{line}");
        (
            Server {
                child,
                addr,
                log,
                listening: line,
            },
            startup,
        )
    }

    /// Runs kilovolt-cli against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .args(["--addr", &self.addr])
            .args(args)
            .output()
            .expect("cli runs")
    }

    /// The port it listens on.
    pub fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 30 s) for a log line containing `needle`.
pub fn wait_for_line(log: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// The value of `name` (e.g. `listen=`) in a log line.
pub fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(name)? + name.len();
    Some(line[start..].split_whitespace().next()?.to_string())
}

/// Waits, up to 30 s, until the node at `addr` sees `n` members alive and
/// ready (the cluster formed and every node refilled).
pub async fn wait_ready(addr: &str, n: usize) {
    use kilovolt::proto::{admin_client::AdminClient, MembersRequest};
    super::eventually(
        Duration::from_secs(30),
        "members alive and ready",
        || async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            let m = AdminClient::new(channel)
                .members(MembersRequest {})
                .await
                .ok()?
                .into_inner();
            let ready = m
                .members
                .iter()
                .filter(|m| m.alive && m.state == "ready")
                .count();
            (ready == n).then_some(())
        },
    )
    .await;
}
