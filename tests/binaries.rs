//! The shipped binaries as users run them: `kilovolt-db` as a process and
//! `kilovolt-cli` against it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SERVER: &str = env!("CARGO_BIN_EXE_kilovolt-db");
const CLI: &str = env!("CARGO_BIN_EXE_kilovolt-cli");

/// A `kilovolt-db` process on an ephemeral loopback port; killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary on an ephemeral loopback port.
    fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(extra);
        Server::launch(cmd)
    }

    /// Runs `cmd` and waits (with a deadline) for its listening line, which
    /// names the address it bound.
    fn launch(mut cmd: Command) -> Server {
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
        let line = wait_for_line(&log, "listening");
        let addr = field(&line, "listen=").expect("the listening line names the address");
        assert!(line.contains("node_id="), "{line}");
        Server { child, addr, log }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .args(["--addr", &self.addr])
            .args(args)
            .output()
            .expect("cli runs")
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_line(log: &mpsc::Receiver<String>, needle: &str) -> String {
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

fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(name)? + name.len();
    Some(line[start..].split_whitespace().next()?.to_string())
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn cli_round_trip_and_exit_codes() {
    let server = Server::start(&[]);

    let out = server.cli(&["set", "greeting", "hello world", "--consistency", "quorum"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("OK (version "), "{}", stdout(&out));

    let out = server.cli(&["get", "greeting"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "hello world".to_string())
    );

    let out = server.cli(&["--json", "get", "greeting", "--consistency", "local"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["found"], true);
    assert_eq!(json["value"], "hello world");
    assert!(json["version"]["time"].as_u64().unwrap() > 0);

    let out = server.cli(&["--json", "del", "greeting"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["status"], "OK");

    // Not found: exit code 1.
    let out = server.cli(&["get", "greeting"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");

    // TTL: readable at once.
    let out = server.cli(&["set", "session", "s1", "--ttl", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&server.cli(&["get", "session"])), "s1");

    // Usage errors: exit code 2.
    assert_eq!(server.cli(&["get"]).status.code(), Some(2));
    assert_eq!(server.cli(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        server
            .cli(&["set", "k", "v", "--ttl", "soon"])
            .status
            .code(),
        Some(2)
    );

    // Server errors: exit code 3 with the gRPC status in the message.
    let out = server.cli(&["set", "", "v"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("InvalidArgument") && stderr(&out).contains("key is empty"),
        "{}",
        stderr(&out)
    );

    // Members and stats.
    let out = server.cli(&["--json", "members"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["members"][0]["address"], server.addr.as_str());
    assert_eq!(json["members"][0]["state"], "ready");
    let out = server.cli(&["members"]);
    assert!(stdout(&out).contains("(this node)"), "{}", stdout(&out));
    let out = server.cli(&["--json", "stats"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (json["keys"].as_u64(), json["tombstones"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(stdout(&server.cli(&["stats"])).contains("tombstones: 1"));
}

#[test]
fn cli_connection_error_is_exit_code_3() {
    // Bind a port and close it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(CLI)
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--timeout",
            "2s",
            "get",
            "k",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_port_in_use_is_a_one_line_error_and_exit_1() {
    let server = Server::start(&[]);
    let out = Command::new(SERVER)
        .args(["--host", "127.0.0.1", "--port", server.port()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn sigterm_and_sigint_shut_down_gracefully() {
    for signal in ["-TERM", "-INT"] {
        let mut server = Server::start(&[]);
        assert_eq!(server.cli(&["set", "k", "v"]).status.code(), Some(0));
        let status = Command::new("kill")
            .args([signal, &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_for_line(&server.log, "stopped");
        let exit = server.child.wait().unwrap();
        assert_eq!(exit.code(), Some(0), "{signal}");
    }
}

#[test]
fn flags_are_also_environment_variables() {
    let mut cmd = Command::new(SERVER);
    cmd.env("KILOVOLT_HOST", "127.0.0.1")
        .env("KILOVOLT_PORT", "0")
        .env("KILOVOLT_NODE_ID", "env-node")
        .env("KILOVOLT_REGION", "mars");
    let server = Server::launch(cmd);
    let out = server.cli(&["--json", "members"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["self_id"], "env-node");
    assert_eq!(json["members"][0]["region"], "mars");
}
