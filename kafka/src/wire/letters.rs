//! `callstream.crm.dlq.v1` and `callstream.recordings.dlq.v1`: a unique
//! record a consumer gave up on, copied as it was (key, value, headers),
//! plus why in headers of its own (`callstream_schemas::raw::H_CRM_*`,
//! `H_RECORDINGS_*`). The letter is still a unique record:
//! [`decode_unique`](super::decode_unique) reads its event and revision.

use std::borrow::Cow;

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use callstream_schemas::raw as h;
use callstream_schemas::Topic;

use super::{header_str, WireError};
use crate::publish::{header, HeaderPair};

/// The consumer that gave a record up: its dead-letter topic and header
/// names follow from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum By<'a> {
    /// A CRM target (`crm.targets.<name>`): `callstream.crm.dlq.v1`.
    Crm { target: Cow<'a, str> },
    /// The recordings archiver: `callstream.recordings.dlq.v1`.
    Recordings,
}

/// Why a consumer gave a record up: what its dead letter adds to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp<'a> {
    pub by: By<'a>,
    /// The last error (the archiver's: every failed medium's), for a person.
    pub error: Cow<'a, str>,
    /// Attempts made; 0 when the record was never tried (undecodable).
    pub attempts: u32,
}

/// A dead letter as written: the original record's key and value, its
/// headers followed by the failure's.
#[derive(Debug, Clone)]
pub struct Letter<'m> {
    pub key: Option<&'m [u8]>,
    pub payload: Option<&'m [u8]>,
    pub headers: OwnedHeaders,
}

impl GaveUp<'_> {
    /// The topic its letters go to.
    pub fn topic(&self) -> Topic {
        match self.by {
            By::Crm { .. } => Topic::CrmDlq,
            By::Recordings => Topic::RecordingsDlq,
        }
    }

    /// The headers the letter adds, in the order written.
    pub fn headers(&self) -> Vec<HeaderPair> {
        let (error, attempts) = names(&self.by);
        let mut headers = Vec::with_capacity(3);
        if let By::Crm { target } = &self.by {
            headers.push(header(h::H_CRM_TARGET, target.as_bytes()));
        }
        headers.push(header(error, self.error.as_bytes()));
        headers.push(header(attempts, self.attempts.to_string()));
        headers
    }

    /// The dead letter of `msg`.
    pub fn letter<'m, M: Message>(&self, msg: &'m M) -> Letter<'m> {
        let mut headers = OwnedHeaders::new();
        for original in msg.headers().into_iter().flat_map(|hs| hs.iter()) {
            headers = headers.insert(original);
        }
        for (key, value) in self.headers() {
            headers = headers.insert(Header {
                key: key.as_ref(),
                value: Some(&value),
            });
        }
        Letter {
            key: msg.key(),
            payload: msg.payload(),
            headers,
        }
    }

    /// Why a CRM target gave up the record of a `callstream.crm.dlq.v1`
    /// letter.
    pub fn decode_crm<M: Message>(msg: &M) -> Result<GaveUp<'_>, WireError> {
        let target = crm_target(msg).ok_or(WireError::MissingHeader(h::H_CRM_TARGET))?;
        decode(
            By::Crm {
                target: target.into(),
            },
            msg,
        )
    }

    /// Why the archiver gave up the record of a
    /// `callstream.recordings.dlq.v1` letter.
    pub fn decode_recordings<M: Message>(msg: &M) -> Result<GaveUp<'_>, WireError> {
        decode(By::Recordings, msg)
    }
}

/// The CRM target a `callstream.crm.dlq.v1` letter names: what a
/// redelivery of one target's letters selects them by.
pub fn crm_target<M: Message>(msg: &M) -> Option<&str> {
    header_str(msg, h::H_CRM_TARGET)
}

/// The (error, attempts) header names of a consumer's letters.
fn names(by: &By<'_>) -> (&'static str, &'static str) {
    match by {
        By::Crm { .. } => (h::H_CRM_ERROR, h::H_CRM_ATTEMPTS),
        By::Recordings => (h::H_RECORDINGS_ERROR, h::H_RECORDINGS_ATTEMPTS),
    }
}

fn decode<'m, M: Message>(by: By<'m>, msg: &'m M) -> Result<GaveUp<'m>, WireError> {
    let (error, attempts) = names(&by);
    let error = header_str(msg, error).ok_or(WireError::MissingHeader(error))?;
    let attempts = header_str(msg, attempts)
        .ok_or(WireError::MissingHeader(attempts))?
        .parse()
        .map_err(|e: std::num::ParseIntError| WireError::InvalidHeader {
            name: attempts,
            expected: "a decimal count",
            detail: e.to_string(),
        })?;
    Ok(GaveUp {
        by,
        error: error.into(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{received, sealed};
    use crate::wire::{decode_unique, event_record, unique_headers};
    use rdkafka::message::{OwnedMessage, Timestamp};

    /// A unique record as CRM and the archiver receive it.
    fn unique() -> OwnedMessage {
        let record = event_record(sealed());
        let msg = received(&record);
        let headers = unique_headers(&msg, 2);
        msg.replace_headers(Some(headers))
    }

    /// `letter` as a redelivery reads it back.
    fn read_back(letter: &Letter<'_>, topic: Topic) -> OwnedMessage {
        OwnedMessage::new(
            letter.payload.map(<[u8]>::to_vec),
            letter.key.map(<[u8]>::to_vec),
            topic.default_name().into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(letter.headers.clone()),
        )
    }

    fn header_names<M: Message>(msg: &M) -> Vec<String> {
        let hs = msg.headers().unwrap();
        hs.iter().map(|h| h.key.to_string()).collect()
    }

    #[test]
    fn a_crm_letter_gives_back_the_record_and_why() {
        let original = unique();
        let sent = GaveUp {
            by: By::Crm {
                target: "hubspot".into(),
            },
            error: "HTTP 401: bad token".into(),
            attempts: 3,
        };
        assert_eq!(sent.topic(), Topic::CrmDlq);
        let letter = read_back(&sent.letter(&original), sent.topic());
        assert_eq!(GaveUp::decode_crm(&letter).unwrap(), sent);
        assert_eq!(crm_target(&letter), Some("hubspot"));
        // The documented names and values, byte for byte, after the
        // record's own headers.
        let mut names = header_names(&original);
        names.extend(["cs_crm_target", "cs_crm_error", "cs_crm_attempts"].map(String::from));
        assert_eq!(header_names(&letter), names);
        assert_eq!(header_str(&letter, "cs_crm_attempts"), Some("3"));
        // Still the unique record: key, value, event and revision.
        assert_eq!(letter.key(), original.key());
        assert_eq!(letter.payload(), original.payload());
        let (was, is) = (
            decode_unique(&original).unwrap(),
            decode_unique(&letter).unwrap(),
        );
        assert_eq!((is.event, is.revision), (was.event, 2));
        // Not a recordings letter.
        assert_eq!(
            GaveUp::decode_recordings(&letter).unwrap_err(),
            WireError::MissingHeader(h::H_RECORDINGS_ERROR)
        );
    }

    #[test]
    fn a_recordings_letter_gives_back_the_record_and_why() {
        let original = unique();
        let sent = GaveUp {
            by: By::Recordings,
            error: "recording[1]: HTTP 403".into(),
            attempts: 0,
        };
        assert_eq!(sent.topic(), Topic::RecordingsDlq);
        let letter = read_back(&sent.letter(&original), sent.topic());
        assert_eq!(GaveUp::decode_recordings(&letter).unwrap(), sent);
        let mut names = header_names(&original);
        names.extend(["cs_recordings_error", "cs_recordings_attempts"].map(String::from));
        assert_eq!(header_names(&letter), names);
        assert_eq!(letter.payload(), original.payload());
        assert_eq!(crm_target(&letter), None);
        assert_eq!(
            GaveUp::decode_crm(&letter).unwrap_err(),
            WireError::MissingHeader(h::H_CRM_TARGET)
        );
    }

    #[test]
    fn a_letter_with_a_damaged_count_names_its_header() {
        let original = unique();
        let letter = OwnedMessage::new(
            None,
            None,
            Topic::CrmDlq.default_name().into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(
                original
                    .headers()
                    .unwrap()
                    .clone()
                    .insert(Header {
                        key: "cs_crm_target",
                        value: Some("t"),
                    })
                    .insert(Header {
                        key: "cs_crm_error",
                        value: Some("e"),
                    })
                    .insert(Header {
                        key: "cs_crm_attempts",
                        value: Some("many"),
                    }),
            ),
        );
        let err = GaveUp::decode_crm(&letter).unwrap_err().to_string();
        assert!(
            err.contains("`cs_crm_attempts` is not a decimal count"),
            "{err}"
        );
    }
}
