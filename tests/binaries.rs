//! The shipped binaries as users run them: `kilovolt-db` as a process and
//! `kilovolt-cli` against it.

mod common;

use std::process::{Command, Output};

use common::process::{wait_for_line, Server, CLI, SERVER};

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
fn cli_maps_and_counters() {
    let server = Server::start(&[]);

    let out = server.cli(&[
        "mset",
        "user:1",
        "name=ada",
        "note=a=b",
        "--consistency",
        "all",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("OK (version "), "{}", stdout(&out));
    let out = server.cli(&["mget", "user:1"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "name\tada\nnote\ta=b".to_string())
    );
    let out = server.cli(&["--json", "mget", "user:1", "name", "--consistency", "local"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["found"], true);
    assert_eq!(json["fields"], serde_json::json!({"name": "ada"}));
    let out = server.cli(&["mdel", "user:1", "name", "note"]);
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(0), "OK".to_string())
    );
    let out = server.cli(&["mget", "user:1"]);
    assert_eq!(out.status.code(), Some(1), "no field left: not found");

    assert_eq!(stdout(&server.cli(&["incr", "hits"])), "1");
    assert_eq!(stdout(&server.cli(&["incr", "hits", "41"])), "42");
    assert_eq!(stdout(&server.cli(&["incr", "hits", "-50"])), "-8");
    let out = server.cli(&["--json", "counter", "hits"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (json["found"].as_bool(), json["value"].as_i64()),
        (Some(true), Some(-8))
    );
    assert_eq!(server.cli(&["counter", "nothing"]).status.code(), Some(1));

    // The wrong kind is a server error naming the kind held.
    let out = server.cli(&["mset", "hits", "a=1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("FailedPrecondition") && stderr(&out).contains("key holds a counter"),
        "{}",
        stderr(&out)
    );
    let out = server.cli(&["get", "hits"]);
    assert_eq!(out.status.code(), Some(3));
    // Overflow is refused, the value kept.
    let out = server.cli(&["incr", "hits", &i64::MAX.to_string()]);
    assert_eq!(stdout(&out), (i64::MAX - 8).to_string());
    let out = server.cli(&["incr", "hits", "9"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("OutOfRange"), "{}", stderr(&out));

    // Usage errors.
    assert_eq!(server.cli(&["mset", "k"]).status.code(), Some(2));
    assert_eq!(server.cli(&["mset", "k", "novalue"]).status.code(), Some(2));
    assert_eq!(server.cli(&["mset", "k", "=v"]).status.code(), Some(2));
    assert_eq!(server.cli(&["mdel", "k"]).status.code(), Some(2));
    assert_eq!(server.cli(&["incr", "k", "x"]).status.code(), Some(2));
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

#[test]
fn a_flag_out_of_range_is_one_line_naming_it_and_exit_2() {
    for (flag, value, range) in [
        ("--expiry-interval", "0s", "1ms to 1h"),
        ("--anti-entropy-interval", "0s", "10ms to 1d"),
    ] {
        let out = Command::new(SERVER)
            .args(["--host", "127.0.0.1", "--port", "0", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(flag) && err.contains(value) && err.contains(range),
            "{err}"
        );
    }
}
