//! `callstream.recordings.v1`: one archived recording or voicemail
//! (`callstream_schemas::recording::RecordingArchived` as JSON), keyed by
//! the event's identity, without headers.

use rdkafka::message::Message;

use callstream_schemas::recording::RecordingArchived;
use callstream_schemas::Topic;

use super::WireError;
use crate::publish::OutRecord;

/// The record announcing `archived`: keyed by identity, so an event's
/// recordings land on one partition, in order.
pub fn recording_record(archived: &RecordingArchived) -> OutRecord {
    OutRecord {
        topic: Topic::Recordings,
        key: archived.identity.clone(),
        payload: serde_json::to_vec(archived).expect("a RecordingArchived always serializes"),
        headers: Vec::new(),
    }
}

/// Reads a `callstream.recordings.v1` record.
pub fn decode_recording<M: Message>(msg: &M) -> Result<RecordingArchived, WireError> {
    let json = msg.payload().ok_or(WireError::Empty)?;
    serde_json::from_slice(json).map_err(|e| WireError::Json {
        expected: "an archived recording",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::received;

    #[test]
    fn a_recording_record_gives_back_the_recording() {
        let sent: RecordingArchived = serde_json::from_value(serde_json::json!({
            "event_id": "ea5dd800-642e-5d07-9154-ebd9939abf31",
            "identity": "onoff:acme:call:c-1",
            "provider": "onoff",
            "tenant": "acme",
            "revision": 2,
            "media": "voicemail",
            "index": 0,
            "source": { "kind": "url", "url": "https://media.example/v.mp3?sig=REDACTED" },
            "location": "s3://bucket/onoff/acme/v.mp3",
            "size_bytes": 1234,
            "content_type": "audio/mpeg",
            "sha256": "00ff",
            "archived_at": "2026-12-02T08:00:00.123Z",
        }))
        .unwrap();
        let record = recording_record(&sent);
        assert_eq!(record.topic, Topic::Recordings);
        assert_eq!(record.key, "onoff:acme:call:c-1");
        assert!(record.headers.is_empty());
        let msg = received(&record);
        assert_eq!(decode_recording(&msg).unwrap(), sent);
        // The value is the schema's JSON, nothing around it.
        assert_eq!(record.payload, serde_json::to_vec(&sent).unwrap());
        let mut damaged = record.clone();
        damaged.payload = b"{}".to_vec();
        let err = decode_recording(&received(&damaged)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("value is not an archived recording"),
            "{err}"
        );
    }
}
