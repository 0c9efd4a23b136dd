//! Every request's head within `header_read_timeout_ms`, not only the
//! first's.
//!
//! actix-http arms its head timer once per connection, when the first
//! request starts (`Flags::STARTED` in `actix_http::h1::dispatcher`). On a
//! keep-alive connection the keep-alive timer ends at the next request's
//! first byte, and from there nothing bounds that request's head: a client
//! that sent one good request could then send a header byte every few
//! seconds and hold the connection, its memory and its file descriptor for
//! as long as it liked (slowloris on a reused connection).
//!
//! [`HeadDeadline`] wraps the connection and knows, through [`Requests`]
//! (shared with [`track`], which sees each request the handler gets),
//! whether a request is being served. Once one was served, the first byte
//! read while none is in flight starts the next head's clock; a request
//! reaching the handler stops it. If it runs out, the read fails with
//! `TimedOut` and actix-http closes the connection without an answer (a
//! client this slow is not waiting for one). The first request keeps
//! actix-http's own timer and its 408 (`answers.rs`).
//!
//! A request's body has its own bound, `body_read_timeout_ms`, in the
//! handler; the keep-alive timer bounds the idle time between requests.
//! Bytes of a next request read while one is in the handler (pipelining)
//! start no clock: if the client then falls silent, actix-http's
//! keep-alive timer (armed after the answer) ends the connection; if it
//! trickles on, its first byte after the answer starts the clock.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The requests of one connection the handler has been given.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    in_flight: Cell<u32>,
    finished: Cell<u64>,
}

impl Requests {
    /// A request reached the handler; it is in flight until the guard drops.
    pub(crate) fn start(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.clone())
    }

    /// A request was served and none is: the next byte starts a head.
    fn between(&self) -> bool {
        self.in_flight.get() == 0 && self.finished.get() > 0
    }
}

/// A request in the handler; its drop (answered, or abandoned) ends it.
pub(crate) struct InFlight(Rc<Requests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
        self.0.finished.set(self.0.finished.get() + 1);
    }
}

/// Counts `request` in flight on its connection while `call` serves it.
/// A request of a connection that is not a [`HeadDeadline`] (none in the
/// gateway) is served as it is.
pub(crate) async fn track<F: Future>(requests: Option<Rc<Requests>>, call: F) -> F::Output {
    let _in_flight = requests.as_ref().map(Requests::start);
    call.await
}

pub(crate) struct HeadDeadline<T> {
    io: T,
    requests: Rc<Requests>,
    timeout: Duration,
    /// The head being read: its deadline, and the `finished` count when it
    /// started. `None` while no head is being timed.
    head: Option<(Instant, u64)>,
    /// What wakes the connection for a deadline; allocated at its second
    /// request. Set to a head's deadline and left there while later heads
    /// come in time: it may ring early (then it is set again), never late.
    /// Resetting it for every request cost ~230 instructions a request
    /// (BENCHMARKS.md, "Every request's head bounded").
    clock: Option<Pin<Box<Sleep>>>,
}

impl<T> HeadDeadline<T> {
    pub fn new(io: T, timeout: Duration) -> Self {
        HeadDeadline {
            io,
            requests: Rc::default(),
            timeout,
            head: None,
            clock: None,
        }
    }

    /// For the connection's requests (`on_connect_ext`).
    pub fn requests(&self) -> Rc<Requests> {
        self.requests.clone()
    }

    /// Makes sure the connection is woken by `deadline`: the clock, if it
    /// has not rung, rings before it (it was set for an earlier head); if
    /// it rang, it is set to `deadline`.
    fn wake_by(&mut self, deadline: Instant, cx: &mut Context<'_>) {
        let clock = match &mut self.clock {
            Some(clock) => {
                if clock.as_mut().poll(cx).is_pending() {
                    return;
                }
                clock.as_mut().reset(deadline);
                clock
            }
            None => self
                .clock
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // Registers the waker for the new deadline.
        let _ = clock.as_mut().poll(cx);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let between = this.requests.between();
        // A request reached the handler (or was served) since the head
        // started: it was in time.
        if !between
            || this
                .head
                .is_some_and(|(_, at)| at != this.requests.finished.get())
        {
            this.head = None;
        }
        if let Some((deadline, _)) = this.head {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if between && this.head.is_none() && buf.filled().len() > before {
            let deadline = Instant::now() + this.timeout;
            this.head = Some((deadline, this.requests.finished.get()));
        }
        if let (Some((deadline, _)), Poll::Pending) = (this.head, &polled) {
            // Waiting for more of the head: a client that stops sending is
            // woken for too.
            this.wake_by(deadline, cx);
        }
        polled
    }
}

writes_through!(HeadDeadline);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_millis(200);

    /// Reads what is there within `wait`: `Ok(None)` if nothing came.
    async fn read_within<T: AsyncRead + Unpin>(
        conn: &mut HeadDeadline<T>,
        wait: Duration,
    ) -> io::Result<Option<usize>> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(wait, conn.read(&mut buf)).await {
            Ok(read) => read.map(Some),
            Err(_) => Ok(None),
        }
    }

    #[tokio::test]
    async fn the_first_request_is_left_to_actix() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, TIMEOUT);
        client.write_all(b"POST / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(read_within(&mut conn, TIMEOUT).await.unwrap(), Some(17));
        // No request was served yet: no clock, however long it waits.
        assert_eq!(read_within(&mut conn, TIMEOUT * 3).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_slow_head_after_a_served_request_is_cut_off() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, TIMEOUT);
        let requests = conn.requests();
        drop(requests.start());
        let started = Instant::now();
        client.write_all(b"P").await.unwrap();
        assert_eq!(read_within(&mut conn, TIMEOUT).await.unwrap(), Some(1));
        // Bytes keep coming, slower than a head should: the clock does
        // not restart with each.
        let mut cut = None;
        for _ in 0..20 {
            tokio::time::sleep(TIMEOUT / 4).await;
            client.write_all(b"O").await.unwrap();
            match read_within(&mut conn, TIMEOUT).await {
                Ok(_) => {}
                Err(err) => {
                    cut = Some(err);
                    break;
                }
            }
        }
        let err = cut.expect("the trickle was never cut off");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
        // And a client that stops sending altogether is woken for too.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, TIMEOUT);
        drop(conn.requests().start());
        client.write_all(b"POST").await.unwrap();
        assert_eq!(read_within(&mut conn, TIMEOUT).await.unwrap(), Some(4));
        let err = read_within(&mut conn, TIMEOUT * 5).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// The clock set for one head rings early for the next (it is left as
    /// it was while heads come in time): the later head still gets its
    /// whole time, and is cut off when that is up.
    #[tokio::test]
    async fn a_head_gets_its_whole_time_when_the_clock_rings_early() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, TIMEOUT);
        let requests = conn.requests();
        drop(requests.start());
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_within(&mut conn, TIMEOUT / 4).await.unwrap().is_some());
        // Waiting for more: the clock is set for this head.
        assert_eq!(read_within(&mut conn, TIMEOUT / 4).await.unwrap(), None);
        drop(requests.start());
        client.write_all(b"G").await.unwrap();
        let second = Instant::now();
        assert_eq!(read_within(&mut conn, TIMEOUT / 4).await.unwrap(), Some(1));
        let err = read_within(&mut conn, TIMEOUT * 5).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(second.elapsed() >= TIMEOUT, "{:?}", second.elapsed());
    }

    #[tokio::test]
    async fn a_request_in_the_handler_stops_the_clock() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut conn = HeadDeadline::new(server, TIMEOUT);
        let requests = conn.requests();
        drop(requests.start());
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(read_within(&mut conn, TIMEOUT).await.unwrap().is_some());
        // The head was complete: the handler has it, and takes long.
        let in_flight = requests.start();
        client.write_all(b"{}").await.unwrap();
        assert!(read_within(&mut conn, TIMEOUT).await.unwrap().is_some());
        assert_eq!(read_within(&mut conn, TIMEOUT * 3).await.unwrap(), None);
        drop(in_flight);
        // Served, the connection waits idle: that is keep-alive's to end.
        assert_eq!(read_within(&mut conn, TIMEOUT * 3).await.unwrap(), None);
        // The next head's first bytes start the clock; its request
        // reaching the handler stops it.
        client.write_all(b"GET /").await.unwrap();
        assert!(read_within(&mut conn, TIMEOUT).await.unwrap().is_some());
        let _second = requests.start();
        assert_eq!(read_within(&mut conn, TIMEOUT * 3).await.unwrap(), None);
    }
}
