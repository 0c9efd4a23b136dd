//! `callstream.calls.v1`: the current state of one call
//! (`callstream_schemas::call::Call` as JSON), keyed by its call key, with
//! CloudEvents headers and the call's revision. Compacted: the newest
//! record of a key is the call as it stands.

use chrono::SecondsFormat;
use rdkafka::message::Message;

use callstream_schemas::call::Call;
use callstream_schemas::event::REVISION_HEADER;
use callstream_schemas::Topic;

use super::{header_str, WireError};
use crate::publish::{header, OutRecord};

/// The `ce_type` of a call state record.
pub const CALL_STATE_TYPE: &str = "io.callstream.call_state.v1";

/// The record of `call` at `revision` (1 for its first state, then one
/// more per change). `ce_id` is `<call key>/<revision>`: the same state
/// published twice (after a crash) has the same id.
pub fn call_record(call: &Call, revision: i64) -> OutRecord {
    let time = call
        .started_at
        .or_else(|| call.timeline.first().map(|step| step.received_at));
    let mut headers = vec![
        header("ce_specversion", "1.0"),
        header("ce_id", format!("{}/{revision}", call.call_key)),
        header(
            "ce_source",
            format!("/callstream/{}/{}", call.provider.as_str(), call.tenant),
        ),
        header("ce_type", CALL_STATE_TYPE),
        header("ce_subject", call.call_key.as_str()),
    ];
    if let Some(time) = time {
        headers.push(header(
            "ce_time",
            time.to_rfc3339_opts(SecondsFormat::Millis, true),
        ));
    }
    headers.push(header("content-type", "application/json"));
    headers.push(header(REVISION_HEADER, revision.to_string()));
    OutRecord {
        topic: Topic::Calls,
        key: call.call_key.clone(),
        payload: serde_json::to_vec(call).expect("a call always serializes"),
        headers,
    }
}

/// Reads a `callstream.calls.v1` record: the call and its revision.
pub fn decode_call<M: Message>(msg: &M) -> Result<(Call, i64), WireError> {
    let json = msg.payload().ok_or(WireError::Empty)?;
    let call: Call = serde_json::from_slice(json).map_err(|e| WireError::Json {
        expected: "a call",
        detail: e.to_string(),
    })?;
    let revision = header_str(msg, REVISION_HEADER)
        .ok_or(WireError::MissingHeader(REVISION_HEADER))?
        .parse()
        .map_err(|e: std::num::ParseIntError| WireError::InvalidHeader {
            name: REVISION_HEADER,
            expected: "a revision number",
            detail: e.to_string(),
        })?;
    Ok((call, revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::fixtures::{received, sealed};

    #[test]
    fn a_call_record_gives_back_the_call_and_its_revision() {
        let (mut event, _) = sealed().into_parts();
        event.correlation.call_id = Some("c-1".into());
        let call = Call::from_events(&[event]).expect("a call event");
        let record = call_record(&call, 3);
        assert_eq!(record.topic, Topic::Calls);
        assert_eq!(record.key, call.call_key);
        let msg = received(&record);
        assert_eq!(decode_call(&msg).unwrap(), (call.clone(), 3));
        assert_eq!(
            header_str(&msg, "ce_id"),
            Some(format!("{}/3", call.call_key).as_str())
        );
        assert_eq!(
            header_str(&msg, "ce_type"),
            Some("io.callstream.call_state.v1")
        );
        let mut bare = record.clone();
        bare.headers.retain(|(name, _)| name != REVISION_HEADER);
        assert_eq!(
            decode_call(&received(&bare)).unwrap_err(),
            WireError::MissingHeader(REVISION_HEADER)
        );
    }
}
