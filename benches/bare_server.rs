//! `bare-server`: the ceiling of Kilovolt-DB's stack. A tonic server over one
//! `scc::HashMap<String, String>` that serves the contract's `Set`, `Get`
//! and `Batch` with nothing else on the path: no validation, no versions
//! kept, no placement, no replication, no Merkle trees. It answers the same
//! messages as a real node (a `Set` answers "OK" and a version, a `Get` the
//! value and a version), so `kilovolt-bench` drives it exactly as it drives a
//! node, and the difference between the two is what Kilovolt-DB itself
//! costs on top of tokio, hyper, tonic, prost and scc.
//!
//! The transport is set up as the node sets up its own: the same allocator
//! (mimalloc) and build profile, a multi-threaded tokio runtime, a listener
//! bound by the caller with TCP_NODELAY on every accepted stream, and the
//! same HTTP/2 keepalive.
//!
//! Built by `make bench` (`cargo build --release --example bare-server`) and
//! started by `benches/suite.sh`; not part of `make build`.
//!
//! ```text
//! bare-server --port 56100 [--host 127.0.0.1]
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kilovolt::proto::{self, kilovolt_server::Kilovolt, kilovolt_server::KilovoltServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// The command line.
#[derive(Parser)]
#[command(
    name = "bare-server",
    about = "A bare tonic server over one scc::HashMap: the ceiling kilovolt-bench compares a node with"
)]
struct Cli {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// TCP port to serve gRPC on (0 picks a free one; the port is printed).
    #[arg(long, default_value_t = 56100)]
    port: u16,
}

/// The clock id every version this server answers carries: a constant,
/// spelled as a node spells its own, so responses have a node's size.
const NODE_HEX: &str = "9f3c5a7e21b4d680";

/// The whole server: one map and a counter standing in for the clock.
#[derive(Default)]
struct Bare {
    /// Every key written, with its value.
    map: scc::HashMap<String, String>,
    /// The time of the next version answered, increasing per write.
    time: AtomicU64,
}

impl Bare {
    /// A version as a node answers one: a write takes the next time, a
    /// read the current one (a node's read copies the stored version and
    /// writes nothing shared, so neither does this one).
    fn version(&self, write: bool) -> proto::Version {
        let time = if write {
            self.time.fetch_add(1, Ordering::Relaxed)
        } else {
            self.time.load(Ordering::Relaxed)
        };
        proto::Version {
            time,
            node: NODE_HEX.to_string(),
        }
    }

    /// Stores the value and answers as a node does.
    fn set(&self, req: proto::SetRequest) -> proto::SetResponse {
        self.map.upsert_sync(req.key, req.value);
        proto::SetResponse {
            status: "OK".into(),
            version: Some(self.version(true)),
        }
    }

    /// Reads the value and answers as a node does.
    fn get(&self, req: &proto::GetRequest) -> proto::GetResponse {
        match self.map.read_sync(req.key.as_str(), |_, v| v.clone()) {
            Some(value) => proto::GetResponse {
                value,
                found: true,
                version: Some(self.version(false)),
            },
            None => proto::GetResponse::default(),
        }
    }

    /// Deletes the key and answers as a node does.
    fn delete(&self, req: &proto::DeleteRequest) -> proto::DeleteResponse {
        self.map.remove_sync(req.key.as_str());
        proto::DeleteResponse {
            status: "OK".into(),
            version: Some(self.version(true)),
        }
    }
}

/// What the bare server does not serve.
fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not served by the bare server"))
}

#[tonic::async_trait]
impl Kilovolt for Bare {
    async fn set(
        &self,
        request: Request<proto::SetRequest>,
    ) -> Result<Response<proto::SetResponse>, Status> {
        Ok(Response::new(Bare::set(self, request.into_inner())))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        Ok(Response::new(Bare::get(self, request.get_ref())))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        Ok(Response::new(Bare::delete(self, request.get_ref())))
    }

    async fn batch(
        &self,
        request: Request<proto::BatchRequest>,
    ) -> Result<Response<proto::BatchResponse>, Status> {
        use proto::batch_op::Op;
        use proto::batch_result::Result as R;
        let results = request
            .into_inner()
            .ops
            .into_iter()
            .map(|op| {
                let result = match op.op {
                    Some(Op::Set(req)) => R::Set(Bare::set(self, req)),
                    Some(Op::Get(req)) => R::Get(Bare::get(self, &req)),
                    Some(Op::Delete(req)) => R::Delete(Bare::delete(self, &req)),
                    None => R::Error(proto::Failure {
                        code: tonic::Code::InvalidArgument as i32,
                        message: "batch operation has none of set, get or delete".into(),
                    }),
                };
                proto::BatchResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(proto::BatchResponse { results }))
    }

    async fn map_set(
        &self,
        _: Request<proto::MapSetRequest>,
    ) -> Result<Response<proto::MapSetResponse>, Status> {
        Err(unimplemented("MapSet"))
    }

    async fn map_get(
        &self,
        _: Request<proto::MapGetRequest>,
    ) -> Result<Response<proto::MapGetResponse>, Status> {
        Err(unimplemented("MapGet"))
    }

    async fn map_remove(
        &self,
        _: Request<proto::MapRemoveRequest>,
    ) -> Result<Response<proto::MapRemoveResponse>, Status> {
        Err(unimplemented("MapRemove"))
    }

    async fn increment(
        &self,
        _: Request<proto::IncrementRequest>,
    ) -> Result<Response<proto::IncrementResponse>, Status> {
        Err(unimplemented("Increment"))
    }

    async fn get_counter(
        &self,
        _: Request<proto::GetCounterRequest>,
    ) -> Result<Response<proto::GetCounterResponse>, Status> {
        Err(unimplemented("GetCounter"))
    }
}

/// The node's allocator (src/main.rs), so that the two differ only in what
/// Kilovolt-DB does per request, not in how the stack's buffers are
/// allocated.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = SocketAddr::new(cli.host, cli.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    println!("bare-server listening on {local}");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(KilovoltServer::new(Bare::default()))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("gRPC server failed")?;
    Ok(())
}
