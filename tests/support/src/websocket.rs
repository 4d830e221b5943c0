//! WebSockets as a page opens them (the browser's cookies, an `Origin`), with tokio-tungstenite.

use std::time::Duration;

use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub use tokio_tungstenite::tungstenite::Message;

use crate::browser::Browser;

pub use tokio_tungstenite::tungstenite::protocol::frame::Frame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A handshake answered with something else than 101.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// How long a test waits for a socket to say something.
const PATIENCE: Duration = Duration::from_secs(10);

impl Browser {
    /// A WebSocket to `path` as a page of `origin` (none: no `Origin` header) opens it.
    pub async fn websocket(&self, path: &str, origin: Option<&str>) -> Result<Socket, Refused> {
        self.websocket_with(path, origin, &[]).await
    }

    /// The same with more handshake headers.
    pub async fn websocket_with(
        &self,
        path: &str,
        origin: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Socket, Refused> {
        let url = self.url(path).replacen("http", "ws", 1);
        let mut request = url.into_client_request().expect("a WebSocket URL");
        let h = request.headers_mut();
        if let Some(cookies) = self.cookie_header() {
            h.insert("cookie", cookies.parse().expect("a cookie header"));
        }
        if let Some(origin) = origin {
            h.insert("origin", origin.parse().expect("an origin"));
        }
        for (name, value) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            h.insert(name, value.parse().expect("a header value"));
        }
        let handshake = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request)).await;
        match handshake.expect("the handshake is answered in time") {
            Ok((socket, _)) => Ok(socket),
            Err(tungstenite::Error::Http(res)) => Err(Refused {
                status: res.status().as_u16(),
                body: res.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default(),
            }),
            Err(e) => panic!("the WebSocket handshake failed: {e}"),
        }
    }
}

/// The next message (pings and pongs included), within a deadline.
pub async fn next_message(socket: &mut Socket) -> Message {
    use futures_util::StreamExt;
    match tokio::time::timeout(PATIENCE, socket.next()).await {
        Ok(Some(Ok(message))) => message,
        Ok(other) => panic!("the socket ended instead: {other:?}"),
        Err(_) => panic!("no message within {PATIENCE:?}"),
    }
}

/// Reads until the other side's Close (within a deadline) and returns it.
pub async fn until_closed(socket: &mut Socket) -> Option<CloseFrame> {
    loop {
        if let Message::Close(frame) = next_message(socket).await {
            return frame;
        }
    }
}

/// The code of a Close frame.
pub fn close_code(frame: &Option<CloseFrame>) -> Option<u16> {
    frame.as_ref().map(|f| u16::from(f.code))
}
