//! Request bodies within one memory budget for all requests.
//!
//! Guarantee: the bytes a body holds in memory are paid for from the
//! budget before they are taken, never from the length a client declares,
//! and given back when the [`Body`] (or the permit it hands out) is
//! dropped. So however many clients upload slowly or stall, the bodies
//! hold at most `max_buffered_body_bytes`. What it does not bound: the
//! HTTP server's own per-connection read buffer, kept to one read step by
//! `server/paced.rs` (see BENCHMARKS.md, "Memory under slow uploads").

use actix_web::web::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit};

/// At or above the HTTP server's read size (8 KiB), a chunk fills most of
/// the buffer it was read into.
const KEEP_CHUNK_BYTES: usize = 8 * 1024;

/// The budget could not pay for the next bytes.
#[derive(Debug)]
pub(crate) struct OverBudget;

/// A body as it arrives, in memory the budget pays for.
///
/// A large chunk is kept as the HTTP server read it, not copied: copying
/// would hold its bytes twice, since the server keeps the read buffer they
/// came in for the connection's life. A small chunk is copied: kept as it
/// is, it could pin a read buffer many times its size, and a client
/// trickling bytes would hold far more memory than the budget counts.
pub struct Body<'a> {
    budget: &'a Semaphore,
    held: Option<SemaphorePermit<'a>>,
    parts: Vec<Bytes>,
    /// Small chunks gathered; paid for by its capacity.
    small: Vec<u8>,
    len: usize,
    /// Largest body: `small` never grows past it.
    limit: usize,
}

impl<'a> Body<'a> {
    pub fn new(budget: &'a Semaphore, limit: usize) -> Body<'a> {
        Body {
            budget,
            held: None,
            parts: Vec::new(),
            small: Vec::new(),
            len: 0,
            limit,
        }
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, chunk: Bytes) -> Result<(), OverBudget> {
        if chunk.len() >= KEEP_CHUNK_BYTES {
            self.pay(chunk.len())?;
            if !self.small.is_empty() {
                self.parts.push(std::mem::take(&mut self.small).into());
            }
            self.len += chunk.len();
            self.parts.push(chunk);
            return Ok(());
        }
        let needed = self.small.len() + chunk.len();
        if needed > self.small.capacity() {
            // Grown by doubling (within the limit), paid for up front.
            let grown = needed.max(self.small.capacity() * 2).min(self.limit);
            self.pay(grown - self.small.capacity())?;
            self.small.reserve_exact(grown - self.small.len());
        }
        self.len += chunk.len();
        self.small.extend_from_slice(&chunk);
        Ok(())
    }

    fn pay(&mut self, bytes: usize) -> Result<(), OverBudget> {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .try_acquire_many(bytes)
            .map_err(|_| OverBudget)?;
        match self.held.as_mut() {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// The whole body, contiguous (copied only when it came in pieces), and
    /// its share of the budget, to keep until the body and what is made of
    /// it are dropped.
    pub fn finish(mut self) -> (Bytes, Option<SemaphorePermit<'a>>) {
        let bytes = if self.parts.is_empty() {
            std::mem::take(&mut self.small).into()
        } else {
            if !self.small.is_empty() {
                self.parts.push(std::mem::take(&mut self.small).into());
            }
            if self.parts.len() == 1 {
                self.parts.pop().expect("one part")
            } else {
                let mut whole = Vec::with_capacity(self.len);
                for part in &self.parts {
                    whole.extend_from_slice(part);
                }
                whole.into()
            }
        };
        (bytes, self.held.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_chunks_are_paid_for_by_the_capacity_they_grow_to() {
        let budget = Semaphore::new(1024);
        let mut body = Body::new(&budget, 1024);
        for _ in 0..300 {
            body.push(Bytes::from_static(b"x")).unwrap();
        }
        // 300 bytes in a buffer grown by doubling to 512.
        assert_eq!(budget.available_permits(), 1024 - 512);
        let (bytes, held) = body.finish();
        assert_eq!(bytes.len(), 300);
        drop(held);
        assert_eq!(budget.available_permits(), 1024, "given back");
    }

    #[test]
    fn past_the_budget_the_next_bytes_are_refused() {
        let budget = Semaphore::new(20 * 1024);
        let mut body = Body::new(&budget, 1 << 20);
        body.push(Bytes::from(vec![1u8; 16 * 1024])).unwrap();
        assert!(body.push(Bytes::from(vec![2u8; 8 * 1024])).is_err());
        let other = Body::new(&budget, 1 << 20);
        drop(body);
        drop(other);
        assert_eq!(budget.available_permits(), 20 * 1024);
    }

    #[test]
    fn pieces_come_back_whole_and_in_order() {
        let budget = Semaphore::new(1 << 20);
        let mut body = Body::new(&budget, 1 << 20);
        body.push(Bytes::from_static(b"head-")).unwrap();
        body.push(Bytes::from(vec![b'm'; 9 * 1024])).unwrap();
        body.push(Bytes::from_static(b"-tail")).unwrap();
        let (bytes, _held) = body.finish();
        assert_eq!(bytes.len(), 5 + 9 * 1024 + 5);
        assert!(bytes.starts_with(b"head-m") && bytes.ends_with(b"m-tail"));
    }
}
