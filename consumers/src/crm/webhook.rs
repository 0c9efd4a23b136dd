//! The generic JSON webhook: `POST <url>` once per call state and per
//! event that names no call (an SMS), with its revision:
//!
//! * a call (`callstream.calls.v1`): `{"revision": 3, "call": {...}}`
//!   (schema: `schemas/json/callstream.calls.v1.schema.json`), with
//!   `Idempotency-Key: <call key>`, the same for every state of the call;
//! * an event: `{"revision": 2, "event": {...}}` (schema:
//!   `schemas/json/callstream.events.v1.schema.json`), with
//!   `Idempotency-Key: <event_id>`.
//!
//! `X-Callstream-Revision` orders the states of one key, so a receiver
//! upserts by the key and keeps the highest revision.

use futures_util::future::BoxFuture;
use reqwest::{Method, Url};
use serde::Serialize;

use callstream_schemas::call::Call;
use callstream_schemas::Event;

use super::{AttemptError, Mapping, Session, Work};

pub struct Webhook {
    pub url: Url,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum Payload<'a> {
    Call(&'a Call),
    Event(&'a Event),
}

#[derive(Serialize)]
struct Body<'a> {
    revision: i64,
    #[serde(flatten)]
    payload: Payload<'a>,
}

impl Mapping for Webhook {
    fn send<'a>(
        &'a self,
        session: &'a Session<'a>,
        work: &'a Work<'a>,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let body = match *work {
                Work::Call { call, revision } => Body {
                    revision,
                    payload: Payload::Call(call),
                },
                Work::Event { event, revision } => Body {
                    revision,
                    payload: Payload::Event(event),
                },
                // Not read by webhook targets.
                Work::Recording(_) => return Ok(()),
            };
            session
                .send_json(Method::POST, self.url.as_str(), &body, &[])
                .await
                .map(drop)
        })
    }
}
