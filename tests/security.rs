//! Real processes with TLS, mutual TLS between nodes and tokens with roles:
//! certificates are made in the test by the same development CA that
//! `kilovolt-cli cert` uses.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::eventually;
use common::process::{field, Server, SERVER};
use kilovolt::proto::cluster::{peer_client::PeerClient, Header, ReadRequest};
use kilovolt::proto::{
    self, admin_client::AdminClient, faults_client::FaultsClient, kilovolt_client::KilovoltClient,
    Consistency,
};
use kilovolt::security::auth::hash_token;
use kilovolt::security::certs::{DevCa, Pem};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

const ADMIN: &str = "admin-secret";
const WRITER: &str = "writer-secret";
const READER: &str = "reader-secret";

/// A directory of certificates and an auth file, removed on drop.
struct Files {
    dir: PathBuf,
    ca: DevCa,
}

impl Files {
    fn new(name: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("kilovolt-security-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = DevCa::new().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem().cert).unwrap();
        Files { dir, ca }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// Writes node `id`'s certificate and key; returns their paths.
    fn node(&self, id: &str) -> (String, String) {
        let pem = self
            .ca
            .node(id, &["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        self.write(id, &pem)
    }

    fn write(&self, name: &str, pem: &Pem) -> (String, String) {
        std::fs::write(self.dir.join(format!("{name}.pem")), &pem.cert).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), &pem.key).unwrap();
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        )
    }

    /// Writes the auth file with `tokens` (name, role, token).
    fn auth(&self, tokens: &[(&str, &str, &str)]) -> String {
        let text: String = tokens
            .iter()
            .map(|(name, role, token)| format!("{name} {role} {}\n", hash_token(token)))
            .collect();
        let path = self.dir.join("auth");
        std::fs::write(&path, format!("# test tokens\n{text}")).unwrap();
        self.path("auth")
    }

    fn ca_pem(&self) -> String {
        self.ca.pem().cert
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peer listener's address, from the node's listening line.
fn peer_addr(line: &str) -> String {
    field(line, "peer_listen=").expect("the listening line names the peer listener")
}

/// A TLS channel to `addr` trusting `ca` (PEM), presenting `identity`, and
/// verifying the server as `domain` (else the address's host).
async fn tls_channel(
    addr: &str,
    ca: &str,
    identity: Option<&Pem>,
    domain: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(pem) = identity {
        tls = tls.identity(Identity::from_pem(&pem.cert, &pem.key));
    }
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn read_request(from: &str) -> ReadRequest {
    ReadRequest {
        header: Some(Header {
            protocol: kilovolt::net::peer::PROTOCOL,
            from: from.into(),
        }),
        keys: vec!["k".into()],
    }
}

/// A cluster node with peer mTLS, client TLS and tokens.
fn secure_node(files: &Files, id: &str, seeds: &[&Server]) -> Server {
    let (cert, key) = files.node(id);
    let seeds: Vec<&str> = seeds.iter().map(|s| s.addr.as_str()).collect();
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--node-id", id])
        .args(["--fault-injection", "--cluster-id", "secure"])
        .args(["--gossip-interval", "50ms", "--anti-entropy-interval", "1s"])
        .args(["--request-timeout", "1s", "--replication-factor", "3"])
        .args(["--peer-tls-cert", &cert, "--peer-tls-key", &key])
        .args(["--peer-ca", &files.path("ca.pem")])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .args(["--auth-file", &files.path("auth")]);
    if !seeds.is_empty() {
        cmd.args(["--cluster", &seeds.join(",")]);
    }
    Server::launch(cmd)
}

struct Secure<'a> {
    files: &'a Files,
}

impl Secure<'_> {
    async fn channel(&self, s: &Server) -> Channel {
        tls_channel(&s.addr, &self.files.ca_pem(), None, None)
            .await
            .expect("a client trusting the CA connects")
    }

    async fn members(&self, s: &Server) -> proto::MembersResponse {
        AdminClient::new(self.channel(s).await)
            .members(with_token(proto::MembersRequest {}, ADMIN))
            .await
            .unwrap()
            .into_inner()
    }

    async fn wait_ready(&self, s: &Server, n: usize) -> proto::MembersResponse {
        eventually(
            Duration::from_secs(30),
            "members alive and ready",
            || async {
                let m = self.members(s).await;
                (m.members
                    .iter()
                    .filter(|m| m.alive && m.state == "ready")
                    .count()
                    == n)
                    .then_some(m)
            },
        )
        .await
    }

    async fn set(
        &self,
        s: &Server,
        key: &str,
        value: &str,
        level: Consistency,
    ) -> Result<(), tonic::Status> {
        KilovoltClient::new(self.channel(s).await)
            .set(with_token(
                proto::SetRequest {
                    key: key.into(),
                    value: value.into(),
                    consistency: level as i32,
                    ..Default::default()
                },
                WRITER,
            ))
            .await
            .map(|_| ())
    }

    async fn local(&self, s: &Server, key: &str) -> Option<String> {
        let r = KilovoltClient::new(self.channel(s).await)
            .get(with_token(
                proto::GetRequest {
                    key: key.into(),
                    consistency: Consistency::Local as i32,
                },
                READER,
            ))
            .await
            .unwrap()
            .into_inner();
        r.found.then_some(r.value)
    }

    async fn faults(&self, s: &Server) -> FaultsClient<Channel> {
        FaultsClient::new(self.channel(s).await)
    }
}

#[tokio::test]
async fn a_tls_cluster_forms_replicates_heals_and_places_only_proven_members() {
    let files = Files::new("cluster");
    files.auth(&[
        ("ops", "admin", ADMIN),
        ("app", "write", WRITER),
        ("dash", "read", READER),
    ]);
    let n1 = secure_node(&files, "n1", &[]);
    let n2 = secure_node(&files, "n2", &[&n1]);
    let n3 = secure_node(&files, "n3", &[&n1, &n2]);
    let c = Secure { files: &files };
    let nodes = [&n1, &n2, &n3];
    for s in nodes {
        c.wait_ready(s, 3).await;
    }

    // Replicates: a write at ALL reaches every replica over mutual TLS.
    c.set(&n1, "k", "v1", Consistency::All).await.unwrap();
    for s in nodes {
        assert_eq!(c.local(s, "k").await.as_deref(), Some("v1"));
    }

    // A partition: n1 cut off on both sides, writes on each side, heal.
    c.faults(&n1)
        .await
        .cut(with_token(
            proto::CutRequest {
                peers: vec!["n2".into(), "n3".into()],
            },
            ADMIN,
        ))
        .await
        .unwrap();
    for s in [&n2, &n3] {
        c.faults(s)
            .await
            .cut(with_token(
                proto::CutRequest {
                    peers: vec!["n1".into()],
                },
                ADMIN,
            ))
            .await
            .unwrap();
    }
    c.set(&n1, "minority", "m", Consistency::One).await.unwrap();
    c.set(&n2, "majority", "M", Consistency::Quorum)
        .await
        .unwrap();
    assert_eq!(c.local(&n2, "minority").await, None);
    for s in nodes {
        c.faults(s)
            .await
            .heal(with_token(proto::HealRequest {}, ADMIN))
            .await
            .unwrap();
    }
    for s in nodes {
        eventually(
            Duration::from_secs(20),
            "both sides' writes everywhere",
            || async {
                (c.local(s, "minority").await.as_deref() == Some("m")
                    && c.local(s, "majority").await.as_deref() == Some("M"))
                .then_some(())
            },
        )
        .await;
    }

    let members = c.members(&n2).await;
    let real_n3_peer = members
        .members
        .iter()
        .find(|m| m.id == "n3")
        .map(|m| m.peer_address.clone())
        .unwrap();
    assert!(!real_n3_peer.is_empty());

    // Intruders without a cluster certificate, joining by gossip: one under
    // a new id, one claiming n3's id, both announcing another region. Their
    // gossip reaches the cluster (they learn the members), but neither is
    // ever placed, takes n3's traffic or moves it to their region.
    let intruder = |id: &str| {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--node-id", id])
            .args(["--cluster-id", "secure", "--gossip-interval", "50ms"])
            .args(["--region", "elsewhere", "--cluster", &n1.addr]);
        Server::launch(cmd)
    };
    let outsider = intruder("outsider");
    let impostor = intruder("n3");
    for s in [&outsider, &impostor] {
        let channel = Endpoint::from_shared(format!("http://{}", s.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        eventually(
            Duration::from_secs(20),
            "the intruder hears the cluster's gossip",
            || {
                let channel = channel.clone();
                async move {
                    let m = AdminClient::new(channel)
                        .members(proto::MembersRequest {})
                        .await
                        .unwrap()
                        .into_inner();
                    m.members
                        .iter()
                        .any(|m| m.id == "n1" && m.alive)
                        .then_some(())
                }
            },
        )
        .await;
    }
    // Gossip goes both ways in every round: let a few dozen rounds pass
    // while checking, then check placement and traffic once more.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        for s in nodes {
            for key in ["a", "b", "c", "k"] {
                let replicas = AdminClient::new(c.channel(s).await)
                    .replicas(with_token(
                        proto::ReplicasRequest { key: key.into() },
                        ADMIN,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .replicas;
                assert!(
                    replicas.iter().all(|r| r.id != "outsider"),
                    "a forged member is placed: {replicas:?}"
                );
                for r in &replicas {
                    if r.id == "n3" {
                        assert_eq!(r.peer_address, real_n3_peer, "n3's traffic redirected");
                    }
                    assert_eq!(r.region, "", "a forged region is placed: {r:?}");
                }
            }
        }
    }
    c.set(&n1, "after", "x", Consistency::All).await.unwrap();
    assert_eq!(c.local(&n3, "after").await.as_deref(), Some("x"));
}

#[tokio::test]
async fn only_a_certified_node_may_speak_the_peer_protocol_on_either_port() {
    let files = Files::new("peer");
    files.auth(&[("ops", "admin", ADMIN)]);
    let (cert, key) = files.node("n1");
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--node-id", "n1"])
        .args(["--peer-tls-cert", &cert, "--peer-tls-key", &key])
        .args(["--peer-ca", &files.path("ca.pem")])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .args(["--auth-file", &files.path("auth")]);
    let node = launch_with_peer(cmd);
    let ca = files.ca_pem();

    // The client port does not serve the peer protocol, even to an admin.
    let channel = tls_channel(&node.0.addr, &ca, None, None).await.unwrap();
    let status = PeerClient::new(channel)
        .read(with_token(read_request("n1"), ADMIN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The peer port: no client certificate, no connection.
    let n1_name = kilovolt::security::node_dns_name("n1");
    let peer = &node.1;
    let refused = match tls_channel(peer, &ca, None, Some(&n1_name)).await {
        Err(_) => true,
        Ok(channel) => PeerClient::new(channel)
            .read(read_request("n1"))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a caller without a certificate reached the peer protocol"
    );

    // A certificate from another CA: no connection either.
    let stranger = DevCa::new().unwrap().node("n1", &[]).unwrap();
    let refused = match tls_channel(peer, &ca, Some(&stranger), Some(&n1_name)).await {
        Err(_) => true,
        Ok(channel) => PeerClient::new(channel)
            .read(read_request("n1"))
            .await
            .is_err(),
    };
    assert!(
        refused,
        "a certificate of another CA reached the peer protocol"
    );

    // The cluster's CA, but a client certificate, or another node's
    // certificate claiming to be n1: the identity does not match.
    let client = files.ca.client("app").unwrap();
    let n2 = files.ca.node("n2", &[]).unwrap();
    for pem in [&client, &n2] {
        let channel = tls_channel(peer, &ca, Some(pem), Some(&n1_name))
            .await
            .unwrap();
        let status = PeerClient::new(channel)
            .read(read_request("n1"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("does not name node \"n1\""),
            "{status:?}"
        );
    }
    // n2's certificate, claiming n2: served.
    let channel = tls_channel(peer, &ca, Some(&n2), Some(&n1_name))
        .await
        .unwrap();
    PeerClient::new(channel)
        .read(read_request("n2"))
        .await
        .unwrap();

    // A server that is not the node asked for: the client refuses it.
    assert!(
        tls_channel(
            peer,
            &ca,
            Some(&n2),
            Some(&kilovolt::security::node_dns_name("n9"))
        )
        .await
        .is_err(),
        "a server certificate for n1 passed as n9"
    );
}

/// Starts `cmd`; returns the server and its peer listener's address.
fn launch_with_peer(cmd: Command) -> (Server, String) {
    let server = Server::launch(cmd);
    let line = server.listening.clone();
    (server, peer_addr(&line))
}

#[tokio::test]
async fn tokens_give_each_role_exactly_its_calls_and_reload_on_sighup() {
    let files = Files::new("roles");
    let auth = files.auth(&[
        ("ops", "admin", ADMIN),
        ("app", "write", WRITER),
        ("dash", "read", READER),
    ]);
    let (cert, key) = files.node("single");
    let client = files.ca.client("app").unwrap();
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", "0"])
        .args(["--tls-cert", &cert, "--tls-key", &key])
        .args(["--tls-client-ca", &files.path("ca.pem")])
        .args(["--auth-file", &auth]);
    let (node, _) = launch_with_peer(cmd);
    let ca = files.ca_pem();

    // Client TLS: a client that does not trust the CA, or presents no
    // certificate, or speaks plaintext, gets nowhere.
    let other_ca = DevCa::new().unwrap().pem().cert;
    let no_trust = get_refused(tls_channel(&node.addr, &other_ca, Some(&client), None).await).await;
    assert!(no_trust, "a client without the CA's trust connected");
    let no_cert = get_refused(tls_channel(&node.addr, &ca, None, None).await).await;
    assert!(no_cert, "a client without a certificate was served");
    let plain = Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await;
    let plain_refused = get_refused(plain).await;
    assert!(plain_refused, "a plaintext client was served");

    let channel = tls_channel(&node.addr, &ca, Some(&client), None)
        .await
        .unwrap();
    let outcome = |token: Option<&'static str>, call: &'static str| {
        let channel = channel.clone();
        async move { call_as(channel, token, call).await }
    };
    let reads = ["Get", "MapGet", "GetCounter", "BatchGet"];
    let writes = [
        "Set",
        "Delete",
        "MapSet",
        "MapRemove",
        "Increment",
        "BatchSet",
    ];
    let admins = ["Members", "Replicas", "Stats", "Digests", "FaultsHeal"];
    for (token, role, allowed) in [
        (READER, "read", &reads[..]),
        (WRITER, "write", &[&reads[..], &writes[..]].concat()[..]),
        (
            ADMIN,
            "admin",
            &[&reads[..], &writes[..], &admins[..]].concat()[..],
        ),
    ] {
        for call in reads.iter().chain(&writes).chain(&admins) {
            let result = outcome(Some(token), call).await;
            if allowed.contains(call) {
                assert!(
                    result.as_ref().map_or_else(
                        |s| s.code() != Code::PermissionDenied && s.code() != Code::Unauthenticated,
                        |_| true
                    ),
                    "{role} refused {call}: {result:?}"
                );
            } else {
                let status = result.expect_err(call);
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{role} {call}: {status:?}"
                );
                assert!(
                    status.message().contains(&format!("role {role}")),
                    "{status:?}"
                );
                let method = call
                    .trim_start_matches("Faults")
                    .trim_end_matches("Get")
                    .trim_end_matches("Set");
                let method = if method == "Batch" { "Batch" } else { method };
                assert!(status.message().contains(method), "{call}: {status:?}");
            }
        }
    }
    for token in [None, Some("not-a-token")] {
        let status = outcome(token, "Get").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // SIGHUP: a token added works, a token removed stops working.
    files.auth(&[("ops", "admin", ADMIN), ("app", "write", "fresh-secret")]);
    let status = Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually(Duration::from_secs(10), "the new token to work", || async {
        outcome(Some("fresh-secret"), "Set").await.ok()
    })
    .await;
    for gone in [WRITER, READER] {
        let status = outcome(Some(gone), "Get").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // SIGHUP re-reads the certificate too: a new connection is served
    // with the new one (signed by another CA here).
    let before = tls_channel(&node.addr, &ca, Some(&client), None)
        .await
        .unwrap();
    let new_ca = DevCa::new().unwrap();
    files.write(
        "single",
        &new_ca.node("single", &["127.0.0.1".into()]).unwrap(),
    );
    let status = Command::new("kill")
        .args(["-HUP", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let new_ca_pem = new_ca.pem().cert;
    eventually(
        Duration::from_secs(10),
        "the new certificate to be served",
        || async {
            let ch = tls_channel(&node.addr, &new_ca_pem, Some(&client), None)
                .await
                .ok()?;
            call_as(ch, Some(ADMIN), "Get").await.ok()
        },
    )
    .await;
    assert!(
        call_as(before, Some(ADMIN), "Get").await.is_ok(),
        "a connection made before the reload keeps working"
    );
    assert!(
        tls_channel(&node.addr, &ca, Some(&client), None)
            .await
            .is_err(),
        "a new connection still got the old certificate"
    );

    // Health checks stay open for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

/// Makes `call` (a name from the role test) with `token`.
async fn call_as(channel: Channel, token: Option<&str>, call: &str) -> Result<(), tonic::Status> {
    fn req<T>(m: T, token: Option<&str>) -> Request<T> {
        match token {
            Some(t) => with_token(m, t),
            None => Request::new(m),
        }
    }
    let mut kv = KilovoltClient::new(channel.clone());
    let mut admin = AdminClient::new(channel.clone());
    let key = || "role-key".to_string();
    let op = |op| proto::BatchOp { op: Some(op) };
    use proto::batch_op::Op;
    match call {
        "Get" => kv
            .get(req(
                proto::GetRequest {
                    key: key(),
                    consistency: 0,
                },
                token,
            ))
            .await
            .map(|_| ()),
        "MapGet" => kv
            .map_get(req(
                proto::MapGetRequest {
                    key: "map".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "GetCounter" => kv
            .get_counter(req(
                proto::GetCounterRequest {
                    key: "ctr".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "BatchGet" => kv
            .batch(req(
                proto::BatchRequest {
                    ops: vec![op(Op::Get(proto::GetRequest {
                        key: key(),
                        consistency: 0,
                    }))],
                },
                token,
            ))
            .await
            .map(|_| ()),
        "Set" => kv
            .set(req(
                proto::SetRequest {
                    key: key(),
                    value: "v".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "Delete" => kv
            .delete(req(
                proto::DeleteRequest {
                    key: "gone".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "MapSet" => kv
            .map_set(req(
                proto::MapSetRequest {
                    key: "map".into(),
                    fields: [("f".to_string(), "v".to_string())].into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "MapRemove" => kv
            .map_remove(req(
                proto::MapRemoveRequest {
                    key: "map".into(),
                    fields: vec!["f".into()],
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "Increment" => kv
            .increment(req(
                proto::IncrementRequest {
                    key: "ctr".into(),
                    delta: 1,
                    ..Default::default()
                },
                token,
            ))
            .await
            .map(|_| ()),
        "BatchSet" => kv
            .batch(req(
                proto::BatchRequest {
                    ops: vec![
                        op(Op::Get(proto::GetRequest {
                            key: key(),
                            consistency: 0,
                        })),
                        op(Op::Set(proto::SetRequest {
                            key: key(),
                            value: "b".into(),
                            ..Default::default()
                        })),
                    ],
                },
                token,
            ))
            .await
            .map(|_| ()),
        "Members" => admin
            .members(req(proto::MembersRequest {}, token))
            .await
            .map(|_| ()),
        "Replicas" => admin
            .replicas(req(proto::ReplicasRequest { key: key() }, token))
            .await
            .map(|_| ()),
        "Stats" => admin
            .stats(req(proto::StatsRequest {}, token))
            .await
            .map(|_| ()),
        "Digests" => admin
            .digests(req(proto::DigestsRequest {}, token))
            .await
            .map(|_| ()),
        // Faults is off on this node: FAILED_PRECONDITION once admitted.
        "FaultsHeal" => FaultsClient::new(channel)
            .heal(req(proto::HealRequest {}, token))
            .await
            .map(|_| ()),
        other => panic!("unknown call {other}"),
    }
}

#[tokio::test]
async fn a_plaintext_node_serves_the_peer_protocol_only_on_its_peer_port() {
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "127.0.0.1", "--port", "0"]);
    let (node, startup) = Server::launch_with_startup_log(cmd);
    let peer = peer_addr(&node.listening);
    // Loopback only: no warning.
    assert!(
        !startup.iter().any(|l| l.contains("non-loopback")),
        "{startup:?}"
    );
    // Any address, nothing secured: one warning naming all three.
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "0.0.0.0", "--port", "0"]);
    let (_exposed, exposed_startup) = Server::launch_with_startup_log(cmd);
    let warnings: Vec<_> = exposed_startup
        .iter()
        .filter(|l| l.contains("non-loopback"))
        .collect();
    assert_eq!(warnings.len(), 1, "{exposed_startup:?}");
    for what in ["--tls-cert", "--auth-file", "--peer-tls-cert"] {
        assert!(warnings[0].contains(what), "{}", warnings[0]);
    }
    assert_ne!(peer, node.addr);
    let channel = Endpoint::from_shared(format!("http://{}", node.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = PeerClient::new(channel)
        .read(read_request("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let channel = Endpoint::from_shared(format!("http://{peer}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PeerClient::new(channel)
        .read(read_request("x"))
        .await
        .unwrap();
}

#[tokio::test]
async fn kilovolt_cli_makes_certificates_and_the_tools_speak_tls_with_a_token() {
    use common::process::CLI;
    const BENCH: &str = env!("CARGO_BIN_EXE_kilovolt-bench");
    let files = Files::new("cli");
    let dir = files.dir.join("made");
    let made = Command::new(CLI)
        .args([
            "cert",
            "--out",
            dir.to_str().unwrap(),
            "--node",
            "n1",
            "--client",
            "app",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let auth = files.auth(&[("app", "write", WRITER)]);
    // Bound to every address, but fully secured: no warning.
    let mut cmd = Command::new(SERVER);
    cmd.args(["--host", "0.0.0.0", "--port", "0", "--node-id", "n1"])
        .args(["--tls-cert", &path("n1.pem"), "--tls-key", &path("n1.key")])
        .args(["--tls-client-ca", &path("ca.pem")])
        .args([
            "--peer-tls-cert",
            &path("n1.pem"),
            "--peer-tls-key",
            &path("n1.key"),
        ])
        .args(["--peer-ca", &path("ca.pem")])
        .args(["--auth-file", &auth]);
    let (node, startup) = Server::launch_with_startup_log(cmd);
    assert!(
        !startup.iter().any(|l| l.contains("non-loopback")),
        "{startup:?}"
    );
    let addr = node.addr.replace("0.0.0.0", "127.0.0.1");
    let tls = [
        "--tls-ca".to_string(),
        path("ca.pem"),
        "--tls-cert".into(),
        path("app.pem"),
        "--tls-key".into(),
        path("app.key"),
    ];
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(CLI);
        cmd.args(["--addr", &addr]).args(&tls).args(args);
        cmd.env_remove("KILOVOLT_TOKEN");
        if let Some(token) = token {
            cmd.env("KILOVOLT_TOKEN", token);
        }
        cmd.output().unwrap()
    };
    let set = cli(&["--token", WRITER, "set", "k", "v"], None);
    assert!(set.status.success(), "{set:?}");
    let get = cli(&["get", "k"], Some(WRITER));
    assert!(get.status.success(), "{get:?}");
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v");
    let refused = cli(&["get", "k"], None);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{refused:?}"
    );

    let bench = Command::new(BENCH)
        .args(["--addr", &addr])
        .args(&tls)
        .args(["--token", WRITER, "--duration", "300ms", "--warmup", "0s"])
        .args([
            "--keys",
            "100",
            "--concurrency",
            "4",
            "--conns",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(bench.status.success(), "{bench:?}");
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert!(report["total"]["ops"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["total"]["errors_total"].as_u64(),
        Some(0),
        "{report}"
    );
}

/// rustls panics at run time when the tree holds two crypto providers and
/// none is chosen: the lock file must hold ring only.
#[test]
fn the_tree_holds_one_crypto_provider() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    assert!(lock.contains("name = \"ring\""));
    assert!(
        !lock.contains("name = \"aws-lc-rs\"") && !lock.contains("name = \"aws-lc-sys\""),
        "aws-lc-rs is in the tree: turn off the default features of the crate that brings it (cargo tree -i aws-lc-rs)"
    );
}

/// Whether a Get (with the admin token) over `channel` fails, or the
/// channel could not even be made.
async fn get_refused<E>(channel: Result<Channel, E>) -> bool {
    match channel {
        Err(_) => true,
        Ok(ch) => KilovoltClient::new(ch)
            .get(with_token(
                proto::GetRequest {
                    key: "k".into(),
                    consistency: 0,
                },
                ADMIN,
            ))
            .await
            .is_err(),
    }
}
