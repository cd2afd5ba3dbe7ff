//! The HTTP/1.1 client of the tests: hyper over a tokio connection, from a
//! chosen source address, made in the calling thread's network namespace.
//! The test service's clients ([`crate::service::Load`]) and the admin API
//! calls ([`crate::Daemon::api_get`]) go through it.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    client::conn::http1::{self, SendRequest},
    header::{CONNECTION, HOST},
    Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpSocket, time::timeout};

use crate::Netns;

/// Whatever failed in an exchange: connecting, sending, reading, or the
/// time allowed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One connection's sending half (its connection runs as a task of the
/// current runtime).
pub type Connection = SendRequest<Empty<Bytes>>;

/// An answer: its status, whether the server closes the connection after
/// it, and its body.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub close: bool,
    pub body: Bytes,
}

/// A connection to `dst`, from `src` (any port) when given, with Nagle off;
/// connecting may take `limit`. Runs on a tokio runtime; the socket belongs
/// to the namespace of the thread that polls this.
pub async fn connect(src: Option<IpAddr>, dst: SocketAddr, limit: Duration) -> Result<Connection, Error> {
    let socket = if dst.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    if let Some(src) = src {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let stream = timeout(limit, socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {dst} timed out")))??;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Its end (or failure) shows in the next request on `sender`.
        let _ = connection.await;
    });
    Ok(sender)
}

/// `GET path` with `Host: host` on `connection`, asking the server to close
/// the connection after it when `close`; the whole answer may take `limit`.
pub async fn get(
    connection: &mut Connection,
    host: &str,
    path: &str,
    close: bool,
    limit: Duration,
) -> Result<Response, Error> {
    let mut request = Request::get(path).header(HOST, host);
    if close {
        request = request.header(CONNECTION, "close");
    }
    let request = request.body(Empty::new())?;
    let exchange = async {
        connection.ready().await?;
        let response = connection.send_request(request).await?;
        let status = response.status();
        let close =
            response.headers().get(CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Error>(Response { status, close, body })
    };
    timeout(limit, exchange).await.map_err(|_| format!("no answer to GET {path} within {limit:?}"))?
}

/// `GET path` on the HTTP server at `addr` in `ns` (a new connection);
/// panics unless it answers 200 with JSON.
#[must_use]
pub fn get_json(ns: &Netns, addr: SocketAddr, path: &str) -> serde_json::Value {
    let response = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a tokio runtime: {e}"));
        runtime.block_on(async {
            let mut connection = connect(None, addr, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            get(&mut connection, &addr.to_string(), path, true, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"))
        })
    });
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, StatusCode::OK, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {body}"))
}
