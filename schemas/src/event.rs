//! The normalized, cross-provider event published on `callstream.events.v1`.
//!
//! One shape for every provider. Consumers key on [`Event::identity`] (what
//! the event *is*) and [`Event::fingerprint`] (what it *says*): the same
//! identity with the same fingerprint is an exact resend; the same identity
//! with a new fingerprint is an update (for example notes added after a call).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Header on `callstream.events.unique.v1`: the event's revision, `1` for
/// its first content, `2`, `3`, ... for each update (same identity, new
/// content). Consumers keep the highest.
pub const REVISION_HEADER: &str = "cs_revision";

/// Namespace for [`Event::event_id`] (UUIDv5 of the identity).
pub(crate) const EVENT_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x6b2f_1c2e_9a1d_4c55_8f1e_3b7d_0c9a_51e4);

/// The provider a delivery came from: a built-in one, or a declarative
/// source (`sources.<name>.declared`, [`crate::declared`]) by its name.
/// Written as its name (`"onoff"`, `"acme_pbx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderId {
    Onoff,
    Xarios,
    Telecmi,
    Twilio,
    Aircall,
    Telnyx,
    /// A declarative source: its name, interned (names are few and live
    /// as long as the process).
    Declared(&'static str),
}

impl ProviderId {
    /// Every built-in provider.
    pub const BUILT_IN: [ProviderId; 6] = [
        ProviderId::Onoff,
        ProviderId::Xarios,
        ProviderId::Telecmi,
        ProviderId::Twilio,
        ProviderId::Aircall,
        ProviderId::Telnyx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderId::Onoff => "onoff",
            ProviderId::Xarios => "xarios",
            ProviderId::Telecmi => "telecmi",
            ProviderId::Twilio => "twilio",
            ProviderId::Aircall => "aircall",
            ProviderId::Telnyx => "telnyx",
            ProviderId::Declared(name) => name,
        }
    }

    /// The provider written `name`: a built-in one, else a declarative
    /// source's, if `name` is a valid source name
    /// ([`ProviderId::is_valid_declared_name`]).
    pub fn from_name(name: &str) -> Option<ProviderId> {
        if let Some(built_in) = ProviderId::BUILT_IN
            .into_iter()
            .find(|p| p.as_str() == name)
        {
            return Some(built_in);
        }
        ProviderId::is_valid_declared_name(name).then(|| ProviderId::Declared(intern(name)))
    }

    /// A declarative source's name: a lowercase ASCII letter, then up to
    /// 62 lowercase letters, digits or `_` (it is a config key, a metric
    /// label and the first part of every identity), and not a built-in
    /// provider's.
    pub fn is_valid_declared_name(name: &str) -> bool {
        let mut bytes = name.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && name.len() <= 63
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !ProviderId::BUILT_IN.iter().any(|p| p.as_str() == name)
    }
}

/// `name`, stored once for the life of the process.
fn intern(name: &str) -> &'static str {
    use std::collections::BTreeSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

impl Serialize for ProviderId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ProviderId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ProviderId::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{name}` is neither a built-in provider nor a valid declarative source name"
            ))
        })
    }
}

impl JsonSchema for ProviderId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ProviderId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let built_in: Vec<&str> = ProviderId::BUILT_IN.iter().map(|p| p.as_str()).collect();
        schemars::json_schema!({
            "description": "The provider a delivery came from: a built-in provider, or a declarative source's name (`sources.<name>.declared`).",
            "type": "string",
            "anyOf": [
                { "description": "A built-in provider.", "enum": built_in },
                {
                    "description": "A declarative source, by its name.",
                    "pattern": "^[a-z][a-z0-9_]{0,62}$"
                }
            ]
        })
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A completed call (a call detail record).
    Call,
    /// An SMS sent or received.
    Sms,
    /// A call that ended in voicemail.
    Voicemail,
    /// A completed call that carries a recording (Onoff sends this *instead of* `call`).
    Recording,
    /// A live step of a call in progress (waiting, ringing, answered, hang-up).
    CallProgress,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Sms => "sms",
            Kind::Voicemail => "voicemail",
            Kind::Recording => "recording",
            Kind::CallProgress => "call_progress",
        }
    }
}

/// Direction, seen from the call centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
    #[default]
    Unknown,
}

/// Normalized outcome. The provider's own value is kept in `provider_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The call was answered (for `call_progress`: it has just been answered).
    Answered,
    /// Nobody answered (missed, abandoned, lost).
    Missed,
    /// The callee was busy.
    Busy,
    /// The call could not be placed (wrong number, rejected, error).
    Failed,
    /// The caller reached voicemail.
    Voicemail,
    /// `call_progress`: the caller is queued or waiting.
    Waiting,
    /// `call_progress`: the call is ringing.
    Ringing,
    /// `call_progress`: the call has hung up.
    Ended,
    /// An SMS that was sent or received.
    Completed,
    #[default]
    Unknown,
}

/// A person or line on one side of the call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Party {
    /// The provider's id for this party (agent id, user id, contact id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Phone number or extension, as the provider wrote it (no reformatting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
}

/// A label attached to the call by a user or the platform.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Tag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    /// Xarios tags are key/value pairs; the value goes here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) color: Option<String>,
}

/// Where a recording or voicemail can be found. Providers give different
/// handles (an URL, a file name, or opaque ids); all that was given is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MediaRef {
    /// Download URL (Onoff). Such links expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// File name on the provider's side (TeleCMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// Opaque ids (Xarios `recordingIds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
}

/// Ids that tie several events to one call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Correlation {
    /// The provider's id for the call (shared by its legs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    /// Groups legs and transfers of one conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) conversation_id: Option<String>,
    /// This leg's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) leg_id: Option<String>,
    /// Leg name (`a`: agent side, `b`: customer side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
}

/// Pointer to the raw record this event was derived from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RawPointer {
    /// Topic holding the raw record.
    pub topic: String,
    /// The `cs_request_id` header of the raw record.
    pub request_id: String,
}

/// One normalized event (`callstream.events.v1`, JSON, keyed by `identity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Stable id: UUIDv5 of `identity` in namespace
    /// `6b2f1c2e-9a1d-4c55-8f1e-3b7d0c9a51e4`. Every resend and every
    /// revision of one event carries the same `event_id`.
    pub event_id: Uuid,
    /// Dedup identity: `provider:tenant:kind:provider_id`. Two legs of one
    /// call, or two webhook triggers for one call, are distinct identities.
    pub identity: String,
    /// Hex SHA-256 of the event's content (every field but `fingerprint`,
    /// `received_at` and `raw`): an exact resend has the same fingerprint.
    pub fingerprint: String,
    pub provider: ProviderId,
    /// The provider's account / tenant / app id, or the source's configured tenant.
    pub tenant: String,
    pub kind: Kind,
    pub direction: Direction,
    pub status: Status,
    /// The provider's own status value, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    /// The provider's own event type (`CDR`, `VM`, `cdr`, `event`, trigger id ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) provider_event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Duration as the provider reports it (never recomputed from timestamps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talk_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_seconds: Option<f64>,
    /// The call centre's side: the user or agent.
    pub internal: Party,
    /// The other side: customer, caller, callee.
    pub external: Party,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms_body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<MediaRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail: Option<MediaRef>,
    #[serde(default)]
    pub correlation: Correlation,
    /// Provider-specific extras kept verbatim (TeleCMI `custom`, Xarios `customData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<serde_json::Value>,
    /// When the gateway received the delivery (RFC 3339, UTC).
    pub received_at: DateTime<Utc>,
    pub raw: RawPointer,
}

impl Event {
    /// Builds the identity string from its parts.
    pub(crate) fn identity_for(
        provider: ProviderId,
        tenant: &str,
        kind: Kind,
        provider_id: &str,
    ) -> String {
        format!(
            "{}:{}:{}:{}",
            provider.as_str(),
            tenant,
            kind.as_str(),
            provider_id
        )
    }

    /// Sets `identity`, `event_id` and `fingerprint` from the content, and
    /// encodes the event for its record in the same pass as the fingerprint.
    /// Normalizers call this last, after every content field is set.
    pub fn seal(mut self, provider_id: &str) -> Sealed {
        self.identity = Self::identity_for(self.provider, &self.tenant, self.kind, provider_id);
        self.event_id = Uuid::new_v5(&EVENT_ID_NAMESPACE, self.identity.as_bytes());
        // A placeholder of the fingerprint's length: it is not hashed, and
        // the digest then overwrites it in the encoded bytes.
        self.fingerprint = "0".repeat(64);
        let hashed = crate::canonical::to_vec_hashed(&self, DELIVERY_FIELDS, "fingerprint")
            .expect("an Event always serializes");
        let mut json = hashed.json;
        self.fingerprint = hex(&hashed.digest);
        let at = hashed
            .located
            .expect("`fingerprint` is a top-level field of every Event");
        // `"<64 hex digits>"`: ASCII only, so JSON writes it verbatim.
        json[at.start + 1..at.end - 1].copy_from_slice(self.fingerprint.as_bytes());
        Sealed { event: self, json }
    }

    /// Hex SHA-256 over the canonical JSON of the content fields.
    pub fn compute_fingerprint(&self) -> String {
        let canonical = crate::canonical::to_vec_without(self, DELIVERY_FIELDS)
            .expect("an Event always serializes");
        hex(&Sha256::digest(&canonical).into())
    }

    /// An empty event for normalizers to fill; `seal` completes it.
    pub fn new(provider: ProviderId, tenant: String, kind: Kind, ctx: &crate::Context<'_>) -> Self {
        Event {
            event_id: Uuid::nil(),
            identity: String::new(),
            fingerprint: String::new(),
            provider,
            tenant,
            kind,
            direction: Direction::Unknown,
            status: Status::Unknown,
            provider_status: None,
            provider_event_type: None,
            started_at: None,
            answered_at: None,
            ended_at: None,
            duration_seconds: None,
            ring_seconds: None,
            talk_seconds: None,
            hold_seconds: None,
            internal: Party::default(),
            external: Party::default(),
            sms_body: None,
            notes: None,
            tags: Vec::new(),
            recording: None,
            voicemail: None,
            correlation: Correlation::default(),
            custom: None,
            received_at: ctx.received_at,
            raw: RawPointer {
                topic: ctx.raw_topic.to_string(),
                request_id: ctx.request_id.to_string(),
            },
        }
    }
}

/// What differs between deliveries of one content: left out of the fingerprint.
const DELIVERY_FIELDS: &[&str] = &["fingerprint", "received_at", "raw"];

fn hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

/// An event whose identity, id and fingerprint are final, with the JSON of
/// its record (canonical: keys in byte order). Read-only, so the JSON and
/// the fingerprint cannot drift from the fields; [`Sealed::into_event`]
/// gives the fields back to change (then seal again).
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    event: Event,
    json: Vec<u8>,
}

impl Sealed {
    /// The event as its record's payload.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn into_event(self) -> Event {
        self.event
    }

    pub fn into_parts(self) -> (Event, Vec<u8>) {
        (self.event, self.json)
    }
}

impl std::ops::Deref for Sealed {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The namespace is published (schema, docs/topics.md, the store's migration):
    /// data teams compute `event_id` from an identity with it.
    #[test]
    fn the_event_id_namespace_is_the_documented_one() {
        assert_eq!(
            EVENT_ID_NAMESPACE.to_string(),
            "6b2f1c2e-9a1d-4c55-8f1e-3b7d0c9a51e4"
        );
        let identity = Event::identity_for(ProviderId::Onoff, "acme", Kind::Call, "c-1");
        assert_eq!(identity, "onoff:acme:call:c-1");
        // Python: uuid.uuid5(uuid.UUID("6b2f1c2e-..."), "onoff:acme:call:c-1")
        assert_eq!(
            Uuid::new_v5(&EVENT_ID_NAMESPACE, identity.as_bytes()).to_string(),
            "ea5dd800-642e-5d07-9154-ebd9939abf31"
        );
    }
}
