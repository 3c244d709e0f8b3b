//! The live bench's h2c readers: streams multiplexed over HTTP/2 connections with prior
//! knowledge, as an Envoy-based ingress (Contour, Istio's gateway) or a mesh sidecar opens
//! them towards the replica.

use super::live::Markers;
use super::*;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

/// Streams per connection: the replica's HTTP/2 limit of concurrent streams.
pub(crate) const PER_CONNECTION: usize = 1_000;

/// `connections` h2c connections to `addr`, each served by a task of its own.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    connections: usize,
) -> anyhow::Result<Vec<SendRequest<Empty<Bytes>>>> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Every stream of a connection takes each event: the connection's window must
            // hold a frame for each of them.
            .initial_connection_window_size(64 << 20)
            .initial_stream_window_size(1 << 20)
            .handshake(TokioIo::new(tcp))
            .await
            .context("the h2c handshake")?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    Ok(senders)
}

/// One stream on `sender`'s connection, read until `count` markers arrived; each arrival is
/// sent on `arrived`.
pub(crate) async fn follow(
    mut sender: SendRequest<Empty<Bytes>>,
    uri: String,
    authorization: String,
    opened: tokio::sync::mpsc::Sender<anyhow::Result<()>>,
    arrived: tokio::sync::mpsc::UnboundedSender<Instant>,
    count: usize,
) {
    let open = async {
        let request = hyper::Request::get(uri)
            .header("authorization", authorization)
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        if response.status() != 200 {
            bail!("the stream answered {}", response.status());
        }
        let mut body = response.into_body();
        // The first frame of the body (a comment): the stream is open.
        match body.frame().await {
            Some(Ok(_)) => Ok(body),
            Some(Err(e)) => Err(e.into()),
            None => bail!("the stream ended before its first byte"),
        }
    };
    let mut body = match open.await {
        Ok(body) => {
            let _ = opened.send(Ok(())).await;
            body
        }
        Err(e) => {
            let _ = opened.send(Err(e)).await;
            return;
        }
    };
    let mut markers = Markers::default();
    while markers.seen < count {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    markers.feed(data, &arrived);
                }
            }
            _ => return,
        }
    }
    // Hold the stream until the run ends, as the HTTP/1.1 readers do.
    std::future::pending::<()>().await;
}
