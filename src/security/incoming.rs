//! The accept loop of a TLS listener: each connection's handshake runs in
//! its own task (a slow or silent client holds up no one), with the server
//! configuration in force when the connection arrived.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::tls::ServerTls;

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the loop pauses after a failed accept (out of file
/// descriptors, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The connections of `listener` that completed a TLS handshake with
/// `tls`'s current configuration, for tonic's `serve_with_incoming`. The
/// loop stops when the stream is dropped (the server stopped). `what`
/// names the listener in logs.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    what: &'static str,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<TlsStream<TcpStream>, io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, from) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    warn!(listener = what, error = %error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Small answers must not wait for delayed ACKs.
            let _ = stream.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        debug!(listener = what, peer = %from, error = %error, "TLS handshake refused")
                    }
                    Err(_) => {
                        debug!(listener = what, peer = %from, "TLS handshake timed out")
                    }
                }
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
