//! The generic JSON webhook: `POST <url>` with the normalized event as it is
//! on `callstream.events.unique.v1`, wrapped with its revision:
//! `{"revision": 2, "event": {...}}` (schema:
//! `schemas/json/callstream.events.v1.schema.json`).

use reqwest::Url;
use serde::Serialize;

use callstream_schemas::Event;

use super::{Mapping, Outgoing};

pub struct Webhook {
    pub url: Url,
}

#[derive(Serialize)]
struct Body<'a> {
    revision: i32,
    event: &'a Event,
}

impl Mapping for Webhook {
    fn request(&self, event: &Event, revision: i32) -> Result<Outgoing, serde_json::Error> {
        Ok(Outgoing {
            url: self.url.clone(),
            body: serde_json::to_vec(&Body { revision, event })?,
        })
    }
}
