//! Reads handed to actix-http in steps, so a connection's unread body
//! waits in the kernel, not in the gateway's memory.
//!
//! actix-http's dispatcher reads a connection until its read buffer holds
//! 32 KiB (growing the buffer by doubling, to 64 KiB) before it decodes
//! and lets the handler take the body, and the decoded chunks keep that
//! buffer alive. 2,000 clients that each send 64 KiB of a body at once
//! then held ~130 MiB the body budget never saw (`body.rs`), and how much
//! depended on scheduling. [`Paced`] ends a read turn once [`STEP`] bytes
//! came in: the connection's task is woken and yields, the dispatcher
//! decodes what it has, and the handler takes it within the budget (or
//! answers 503 and the connection closes) before more is read. Per
//! connection, the HTTP server then holds at most about `STEP` of body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read in one turn of a connection's task: actix-http's own read
/// size (8 KiB) twice, so a typical webhook's head and body are one turn.
pub(crate) const STEP: usize = 16 * 1024;

pub struct Paced<T> {
    io: T,
    /// Read since the task last yielded.
    this_turn: usize,
}

impl<T> Paced<T> {
    pub fn new(io: T) -> Paced<T> {
        Paced { io, this_turn: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.this_turn >= STEP {
            // A yield, not a wait: woken at once, so the dispatcher
            // decodes what it read and comes back for more.
            this.this_turn = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) => this.this_turn += buf.filled().len() - before,
            Poll::Pending => this.this_turn = 0,
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

writes_through!(Paced);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Every byte arrives, in order, and a turn ends once `STEP` bytes
    /// came in: read as actix-http reads (8 KiB at a time), no turn
    /// takes more than `STEP`.
    #[tokio::test]
    async fn reads_everything_in_steps() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &data)
            .await
            .unwrap();
        drop(client);
        let mut paced = Paced::new(server);
        let (mut got, mut turn, mut turns) = (Vec::new(), 0, 0);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut chunk = vec![0u8; 8 * 1024];
        loop {
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut paced).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
                Poll::Ready(Ok(())) => {
                    turn += buf.filled().len();
                    assert!(turn <= STEP, "{turn} bytes in one turn");
                    got.extend_from_slice(buf.filled());
                }
                Poll::Ready(Err(err)) => panic!("{err}"),
                Poll::Pending => (turn, turns) = (0, turns + 1),
            }
        }
        assert_eq!(got, data);
        assert_eq!(turns, data.len() / STEP, "a yield after each full step");
        // And through the usual helpers, which retry after a yield.
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &data)
            .await
            .unwrap();
        drop(client);
        let mut all = Vec::new();
        Paced::new(server).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);
    }
}
