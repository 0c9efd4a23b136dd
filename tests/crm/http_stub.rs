//! The HTTP/1.1 plumbing the CRM stand-ins share: one request per
//! connection on 127.0.0.1:0, read whole, answered as JSON, then closed.

use std::collections::HashMap;
use std::future::Future;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as received.
pub struct Incoming {
    /// Upper case.
    pub method: String,
    pub path: String,
    /// Without the `?`; empty when there is none.
    pub query: String,
    /// By lower-case name.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// An answer: status, extra header lines (each ending in `\r\n`), JSON body.
pub type Outgoing = (u16, String, String);

/// Listens on a free port of 127.0.0.1 and answers every request with
/// `handle`; returns the port.
pub async fn serve<F, Fut>(handle: F) -> u16
where
    F: Fn(Incoming) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Outgoing> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Some((stream, request)) = read(stream).await {
                    answer(stream, handle(request).await).await;
                }
            });
        }
    });
    port
}

async fn read(stream: TcpStream) -> Option<(BufReader<TcpStream>, Incoming)> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await.ok()?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_ascii_uppercase();
    let target = words.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length = headers.get("content-length").and_then(|v| v.parse().ok());
    let mut body = vec![0; length.unwrap_or(0)];
    stream.read_exact(&mut body).await.ok()?;
    Some((
        stream,
        Incoming {
            method,
            path,
            query,
            headers,
            body,
        },
    ))
}

async fn answer(mut stream: BufReader<TcpStream>, (status, extra, body): Outgoing) {
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.get_mut().write_all(response.as_bytes()).await;
    let _ = stream.get_mut().shutdown().await;
}
