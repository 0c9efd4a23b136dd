//! Bodies for the answers actix-http writes itself.
//!
//! actix-http answers three kinds of request in its HTTP/1 connection
//! dispatcher (`actix_http::h1::dispatcher`), before any reaches the
//! gateway: 400 (a request line or header it cannot parse), 408 (the first
//! request's head not complete within `header_read_timeout_ms`) and 431 (a
//! head over 128 KiB or 96 headers). It writes them with an empty body,
//! exactly `HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n` + (sometimes)
//! `connection: close\r\n` + `date: …\r\n\r\n`, and has no hook to change
//! them. [`JsonAnswers`] wraps each accepted connection and rewrites those
//! heads, as they are written, into the gateway's own error answers:
//! `content-type: application/json` and `{"error": "..."}` ([`ApiError`]).
//!
//! How it finds them, without touching anything else:
//! - It follows the responses written on the connection: where one starts
//!   it reads its head (status, `content-length`, `transfer-encoding`),
//!   then lets the rest of that response through by count. It looks at
//!   heads only; a body is neither copied nor scanned, and a head is only
//!   copied when a single write ends inside it (actix-http never does that:
//!   it encodes whole heads into its write buffer).
//! - It rewrites a head only when it has exactly actix-http's shape:
//!   status 400, 408 or 431, `content-length: 0`, no header but
//!   `content-length`, `connection` and `date`. The gateway itself never
//!   answers so: its 400 and 408 are [`ApiError`]s (`BadRequest`,
//!   `BodyTimeout`), always with a JSON body and its `content-type`, and it
//!   never answers 431.
//! - What it cannot follow, it stops following: a response framed by
//!   `transfer-encoding` or by closing the connection (the gateway writes
//!   neither), a 101, or bytes that are not a response head where one should
//!   start (after an answer to HEAD, whose `content-length` announces a body
//!   that is not sent). From there the rest of the connection passes through
//!   untouched, so a bare answer stays bare rather than risk a wrong
//!   rewrite; only that connection, whose client chose the HEAD or the
//!   pipelining, is concerned.
//! - actix-http's own answer is the last thing written on its connection: it
//!   stops reading and closes after it. The rewrite adds `connection: close`
//!   when the head does not say so, as it is true.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ApiError;

/// A head longer than this is not followed: actix-http's own are ~100
/// bytes, the gateway's a few hundred.
const MAX_HEAD: usize = 16 * 1024;
const HEAD_END: &[u8] = b"\r\n\r\n";
const RESPONSE_START: &[u8] = b"HTTP/1.";

/// A connection whose bare 400, 408 and 431 answers get JSON bodies.
pub(crate) struct JsonAnswers<T> {
    io: T,
    state: State,
    /// The start of a head a write ended inside of (`State::Held`).
    held: Vec<u8>,
    /// Bytes accepted from the writer, not yet written to `io`: a held or
    /// rewritten head. Written before anything else.
    owed: Vec<u8>,
    owed_from: usize,
    /// `header_read_timeout_ms`, for the 408 answer.
    head_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next byte written starts a response.
    Head,
    /// A write ended inside a head; its start is in `held`.
    Held,
    /// This many bytes (the rest of a head, a body) pass, then a response starts.
    Pass(u64),
    /// Responses it cannot follow were written: everything passes.
    Untouched,
}

/// What a complete head is.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// actix-http's own bare answer, rewritten.
    Bare(Vec<u8>),
    /// Any other response, with the length of its body when it is known.
    Other(Option<u64>),
}

impl<T> JsonAnswers<T> {
    pub fn new(io: T, head_timeout_ms: u64) -> Self {
        JsonAnswers {
            io,
            state: State::Head,
            held: Vec::new(),
            owed: Vec::new(),
            owed_from: 0,
            head_timeout_ms,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonAnswers<T> {
    /// Writes what is owed; ready when nothing is.
    fn poll_owed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.owed_from < self.owed.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.owed[self.owed_from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.owed_from += n;
        }
        self.owed.clear();
        self.owed_from = 0;
        Poll::Ready(Ok(()))
    }

    /// Owes `bytes` and starts writing them: `accepted` bytes of the
    /// writer's buffer are taken even if `io` cannot take them yet.
    fn owe(
        &mut self,
        cx: &mut Context<'_>,
        bytes: Vec<u8>,
        accepted: usize,
    ) -> Poll<io::Result<usize>> {
        self.owed = bytes;
        self.owed_from = 0;
        self.accept(cx, accepted)
    }

    /// Takes `accepted` bytes of the writer's buffer, starting to write what
    /// is owed; only an error writing it is reported now.
    fn accept(&mut self, cx: &mut Context<'_>, accepted: usize) -> Poll<io::Result<usize>> {
        match self.poll_owed(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(accepted)),
        }
    }

    /// Held bytes are owed as they are, and the rest of the connection
    /// passes: a writer that flushes inside a head gets its bytes out.
    fn release_held(&mut self) {
        if self.state == State::Held {
            self.owed = std::mem::take(&mut self.held);
            self.owed_from = 0;
            self.state = State::Untouched;
        }
    }

    /// Writes what is in `buf` of the `rest` bytes that pass before the
    /// next response starts.
    fn poll_pass(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
        rest: u64,
    ) -> Poll<io::Result<usize>> {
        let take = buf.len().min(usize::try_from(rest).unwrap_or(usize::MAX));
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, &buf[..take]))?;
        self.state = after(rest, n);
        Poll::Ready(Ok(n))
    }

    /// `buf` starts a response.
    fn poll_write_head(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let searched = &buf[..buf.len().min(MAX_HEAD)];
        match find(searched, HEAD_END) {
            Some(at) => {
                let end = at + HEAD_END.len();
                match self.head(&buf[..end]) {
                    Head::Bare(answer) => {
                        self.state = State::Head;
                        self.owe(cx, answer, end)
                    }
                    // The head and as much of its body as is here, in one write.
                    Head::Other(Some(body)) => {
                        self.poll_pass(cx, buf, (end as u64).saturating_add(body))
                    }
                    Head::Other(None) => {
                        self.state = State::Untouched;
                        Pin::new(&mut self.io).poll_write(cx, buf)
                    }
                }
            }
            None if buf.len() < MAX_HEAD && could_start_response(buf) => {
                self.held.clear();
                self.held.extend_from_slice(buf);
                self.state = State::Held;
                Poll::Ready(Ok(buf.len()))
            }
            None => {
                self.state = State::Untouched;
                Pin::new(&mut self.io).poll_write(cx, buf)
            }
        }
    }

    /// `buf` continues the head whose start is in `held`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let before = self.held.len();
        let take = buf.len().min(MAX_HEAD - before);
        self.held.extend_from_slice(&buf[..take]);
        // The blank line may straddle the held bytes and the new ones.
        let from = before.saturating_sub(HEAD_END.len() - 1);
        match find(&self.held[from..], HEAD_END) {
            Some(at) => {
                let end = from + at + HEAD_END.len();
                self.held.truncate(end);
                let head = std::mem::take(&mut self.held);
                let (owed, state) = match self.head(&head) {
                    Head::Bare(answer) => (answer, State::Head),
                    Head::Other(Some(body)) => (head, after(body, 0)),
                    Head::Other(None) => (head, State::Untouched),
                };
                self.state = state;
                self.owe(cx, owed, end - before)
            }
            None if self.held.len() < MAX_HEAD && could_start_response(&self.held) => {
                Poll::Ready(Ok(take))
            }
            None => {
                self.release_held();
                self.accept(cx, take)
            }
        }
    }

    fn head(&self, head: &[u8]) -> Head {
        read_head(head, self.head_timeout_ms)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonAnswers<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_owed(cx))?;
        if buf.is_empty() {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        match this.state {
            State::Untouched => Pin::new(&mut this.io).poll_write(cx, buf),
            State::Pass(rest) => this.poll_pass(cx, buf, rest),
            State::Head => this.poll_write_head(cx, buf),
            State::Held => this.poll_write_held(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.release_held();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.release_held();
        ready!(this.poll_owed(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonAnswers<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

/// The state once `written` of `rest` bytes to pass are written.
fn after(rest: u64, written: usize) -> State {
    match rest - written as u64 {
        0 => State::Head,
        rest => State::Pass(rest),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether `bytes` may be the start of a response head.
fn could_start_response(bytes: &[u8]) -> bool {
    let n = bytes.len().min(RESPONSE_START.len());
    bytes[..n] == RESPONSE_START[..n]
}

/// Reads a complete head (ending with its blank line).
fn read_head(head: &[u8], head_timeout_ms: u64) -> Head {
    // Its lines, each ending in `\r`.
    let Some(head) = head.strip_suffix(b"\n\r\n") else {
        return Head::Other(None);
    };
    let mut lines = lines(head);
    let Some(status) = lines.next().flatten().and_then(status_of) else {
        return Head::Other(None);
    };
    let (mut length, mut framed, mut bare) = (None, false, true);
    for line in lines {
        let Some((name, value)) = line.and_then(header) else {
            return Head::Other(None);
        };
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) else {
                return Head::Other(None);
            };
            if length.is_some_and(|l| l != n) {
                return Head::Other(None);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            framed = true;
        } else if !name.eq_ignore_ascii_case(b"connection") && !name.eq_ignore_ascii_case(b"date") {
            bare = false;
        }
    }
    let own = match status {
        400 => Some(ApiError::MalformedRequest),
        408 => Some(ApiError::HeadTimeout {
            timeout_ms: head_timeout_ms,
        }),
        431 => Some(ApiError::HeadTooLarge),
        _ => None,
    };
    match own {
        Some(error) if bare && !framed && length == Some(0) => Head::Bare(with_body(head, &error)),
        _ => Head::Other(match status {
            101 => None,
            100..=199 | 204 | 304 => Some(0),
            _ if framed => None,
            _ => length,
        }),
    }
}

/// A head's lines without their `\r\n`, `None` for one without `\r`.
fn lines(head: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r"))
}

/// `HTTP/1.x NNN reason` → NNN.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(RESPONSE_START)?;
    let (version, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    if !matches!(version, b'0' | b'1') || rest.len() < 3 || rest.get(3).is_some_and(|&b| b != b' ')
    {
        return None;
    }
    std::str::from_utf8(&rest[..3]).ok()?.parse().ok()
}

/// `name: value` → (name, value without surrounding blanks).
fn header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let value = line[colon + 1..].trim_ascii();
    Some((&line[..colon], value))
}

/// A bare head (its lines as [`read_head`] checked them) as a JSON answer: the same status
/// line, `date` and `connection`, then `connection: close` if it was not
/// there, `content-type`, `content-length` and the body.
fn with_body(head: &[u8], error: &ApiError) -> Vec<u8> {
    let body = error.body().to_string();
    let mut answer = Vec::with_capacity(head.len() + body.len() + 96);
    let mut closes = false;
    for (i, line) in lines(head).flatten().enumerate() {
        if i > 0 {
            let (name, value) = header(line).unwrap_or_default();
            if name.eq_ignore_ascii_case(b"content-length") {
                continue;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                // `keep-alive` (HTTP/1.0) would not be true: it closes.
                if !value.eq_ignore_ascii_case(b"close") {
                    continue;
                }
                closes = true;
            }
        }
        answer.extend_from_slice(line);
        answer.extend_from_slice(b"\r\n");
    }
    if !closes {
        answer.extend_from_slice(b"connection: close\r\n");
    }
    answer.extend_from_slice(b"content-type: application/json\r\n");
    answer.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    answer.extend_from_slice(body.as_bytes());
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const DATE: &str = "date: Wed, 02 Dec 2026 08:06:21 GMT\r\n";

    /// As actix-http writes them (h1::encoder).
    fn bare(status: &str, connection: &str) -> String {
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n{connection}{DATE}\r\n")
    }

    fn json_answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: application/json\r\n{DATE}\r\n{body}",
            body.len()
        )
    }

    /// What the gateway's own answers look like.
    const PUBLISHED: &str = r#"{"status":"published","request_id":"6a1c"}"#;

    /// A connection that takes at most `limit` bytes a write and, with
    /// `stalls`, is not ready every other time.
    struct Peer {
        got: Vec<u8>,
        writes: Vec<usize>,
        limit: usize,
        stalls: bool,
        stalled: bool,
    }

    impl AsyncWrite for Peer {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.stalls && !self.stalled {
                self.stalled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.stalled = false;
            let n = buf.len().min(self.limit);
            self.got.extend_from_slice(&buf[..n]);
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Writes `chunks` as actix-http does (each until taken whole), then
    /// shuts down; what the peer got, and the sizes of its writes.
    async fn send(chunks: &[&[u8]], limit: usize, stalls: bool) -> (Vec<u8>, Vec<usize>) {
        let peer = Peer {
            got: Vec::new(),
            writes: Vec::new(),
            limit,
            stalls,
            stalled: false,
        };
        let mut conn = JsonAnswers::new(peer, 300);
        for chunk in chunks {
            let mut chunk = *chunk;
            while !chunk.is_empty() {
                let n = conn.write(chunk).await.unwrap();
                assert!(n > 0, "a write takes something");
                chunk = &chunk[n..];
            }
        }
        conn.shutdown().await.unwrap();
        (conn.io.got, conn.io.writes)
    }

    /// `stream` written split at every byte position, byte by byte, and
    /// whole; to peers taking 1, 2, 7 or any bytes a write, ready or not:
    /// the peer always gets `expected`.
    async fn sends_as(stream: &str, expected: &str) {
        let stream = stream.as_bytes();
        let mut splits: Vec<Vec<&[u8]>> = (1..stream.len())
            .map(|at| vec![&stream[..at], &stream[at..]])
            .collect();
        splits.push(stream.chunks(1).collect());
        splits.push(vec![stream]);
        for chunks in &splits {
            for limit in [1, 2, 7, usize::MAX] {
                for stalls in [false, true] {
                    let (got, _) = send(chunks, limit, stalls).await;
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        expected,
                        "chunks {:?}, limit {limit}, stalls {stalls}",
                        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
                    );
                }
            }
        }
    }

    /// [`bare`] without a `connection` header, rewritten.
    fn rewritten(status: &str, error: &ApiError) -> String {
        let body = error.body().to_string();
        format!(
            "HTTP/1.1 {status}\r\n{DATE}connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn bare_answers_get_json_bodies_however_they_are_written() {
        let timeout = ApiError::HeadTimeout { timeout_ms: 300 };
        for (status, error) in [
            ("400 Bad Request", ApiError::MalformedRequest),
            ("408 Request Timeout", timeout),
            (
                "431 Request Header Fields Too Large",
                ApiError::HeadTooLarge,
            ),
        ] {
            let expected = rewritten(status, &error);
            sends_as(&bare(status, ""), &expected).await;
        }
    }

    #[test]
    fn the_rewrite_is_a_json_answer_that_closes() {
        let Head::Bare(answer) = read_head(bare("408 Request Timeout", "").as_bytes(), 300) else {
            panic!("not rewritten");
        };
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 408 Request Timeout"));
        let mut headers: Vec<&str> = lines.collect();
        headers.sort();
        let length = format!("content-length: {}", body.len());
        let mut expected = [
            "connection: close",
            "content-type: application/json",
            length.as_str(),
            DATE.trim_end(),
        ];
        expected.sort();
        assert_eq!(headers, expected);
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "request headers not received within 300 ms"})
        );
    }

    #[test]
    fn a_connection_header_is_kept_when_it_closes_and_replaced_otherwise() {
        let close = "connection: close\r\n";
        let Head::Bare(answer) = read_head(bare("400 Bad Request", close).as_bytes(), 1) else {
            panic!("not rewritten");
        };
        let answer = String::from_utf8(answer).unwrap();
        assert_eq!(answer.matches("connection: close").count(), 1, "{answer}");
        assert!(answer.starts_with(&format!("HTTP/1.1 400 Bad Request\r\n{close}")));
        let Head::Bare(answer) = read_head(
            bare("400 Bad Request", "connection: keep-alive\r\n").as_bytes(),
            1,
        ) else {
            panic!("not rewritten");
        };
        let answer = String::from_utf8(answer).unwrap();
        assert!(!answer.contains("keep-alive"), "{answer}");
        assert_eq!(answer.matches("connection: close").count(), 1, "{answer}");
    }

    #[tokio::test]
    async fn a_bare_answer_after_pipelined_answers_gets_a_body_and_they_stay_intact() {
        let good = json_answer("200 OK", PUBLISHED);
        let bad = bare("400 Bad Request", "");
        let expected = format!(
            "{good}{good}{}",
            rewritten("400 Bad Request", &ApiError::MalformedRequest)
        );
        sends_as(&format!("{good}{good}{bad}"), &expected).await;
        // 100 Continue has no body and no length.
        let stream = format!("HTTP/1.1 100 Continue\r\n\r\n{good}{bad}");
        let expected = format!(
            "HTTP/1.1 100 Continue\r\n\r\n{good}{}",
            rewritten("400 Bad Request", &ApiError::MalformedRequest)
        );
        sends_as(&stream, &expected).await;
    }

    #[tokio::test]
    async fn the_gateways_own_answers_pass_untouched() {
        let own = [
            json_answer(
                "400 Bad Request",
                r#"{"error":"could not read the request body: x"}"#,
            ),
            json_answer(
                "408 Request Timeout",
                r#"{"error":"request body not received within 300 ms"}"#,
            ),
            json_answer("200 OK", ""),
            format!("HTTP/1.1 204 No Content\r\n{DATE}\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-other: 1\r\n{DATE}\r\n"),
        ];
        for answer in &own {
            sends_as(answer, answer).await;
        }
        let all = own.concat();
        sends_as(&all, &all).await;
    }

    /// A body is written with its head, in one write, never copied.
    #[tokio::test]
    async fn a_whole_answer_is_one_write() {
        let big = format!(r#"{{"status":"{}"}}"#, "x".repeat(100_000));
        let answer = json_answer("200 OK", &big);
        let (got, writes) = send(&[answer.as_bytes()], usize::MAX, false).await;
        assert_eq!(got, answer.as_bytes());
        assert_eq!(writes, [answer.len()]);
    }

    /// What it cannot follow, it leaves alone, bare answers after it too.
    #[tokio::test]
    async fn after_what_it_cannot_follow_everything_passes_untouched() {
        let bad = bare("400 Bad Request", "");
        let cases = [
            // An answer to HEAD: its length announces a body not sent.
            format!("HTTP/1.1 200 OK\r\ncontent-length: 18\r\n{DATE}\r\n{bad}"),
            format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n{DATE}\r\n5\r\nhello\r\n0\r\n\r\n{bad}"),
            format!("HTTP/1.1 200 OK\r\n{DATE}\r\nuntil closed{bad}"),
            format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n{bad}"),
            format!("not a response\r\n\r\n{bad}"),
        ];
        for stream in &cases {
            sends_as(stream, stream).await;
        }
    }

    /// A writer that flushes inside a head gets those bytes out as written.
    #[tokio::test]
    async fn a_flush_inside_a_head_writes_it_as_it_is() {
        let bad = bare("400 Bad Request", "");
        let peer = Peer {
            got: Vec::new(),
            writes: Vec::new(),
            limit: usize::MAX,
            stalls: false,
            stalled: false,
        };
        let mut conn = JsonAnswers::new(peer, 300);
        conn.write_all(&bad.as_bytes()[..10]).await.unwrap();
        conn.flush().await.unwrap();
        assert_eq!(conn.io.got, &bad.as_bytes()[..10]);
        conn.write_all(&bad.as_bytes()[10..]).await.unwrap();
        conn.flush().await.unwrap();
        assert_eq!(conn.io.got, bad.as_bytes());
    }
}
