//! `callstream.recordings.v1`: one record per recording or voicemail the
//! archiver (`callstream-recordings`) stored, keyed by the event's
//! `identity`. Providers' links expire (Onoff) or need credentials (TeleCMI,
//! Xarios); this record says where the audio now lives and how to check it.
//!
//! The same archived audio always gives the same record, so a record seen
//! twice (at-least-once delivery) is an exact copy, never a conflict.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::ProviderId;

/// Which of the event's media this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    /// The event's `recording`.
    Recording,
    /// The event's `voicemail`.
    Voicemail,
}

impl Media {
    pub const ALL: [Media; 2] = [Media::Recording, Media::Voicemail];

    pub fn as_str(self) -> &'static str {
        match self {
            Media::Recording => "recording",
            Media::Voicemail => "voicemail",
        }
    }
}

/// The provider's handle the audio was fetched from. Never carries a
/// credential: query values of a URL are replaced by `REDACTED`, and a
/// handle that went through a configured URL template is given as the
/// handle alone (the template holds the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MediaSource {
    /// A download URL from the event (Onoff), without user info, fragment
    /// or query values.
    Url { url: String },
    /// A file name (TeleCMI `filename`), turned into a URL by the template.
    FileName { file_name: String },
    /// An opaque id (Xarios `recordingIds`), turned into a URL by the template.
    Id { id: String },
}

/// One archived recording or voicemail (`callstream.recordings.v1`, JSON,
/// keyed by the event's `identity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RecordingArchived {
    /// The event's `event_id` (stable across its revisions).
    pub event_id: Uuid,
    /// The event's `identity`; also the record key.
    pub identity: String,
    pub provider: ProviderId,
    pub tenant: String,
    /// The event revision (`cs_revision`) whose media was archived.
    pub revision: i32,
    pub media: Media,
    /// Position among the media's handles: 0, or the position in Xarios
    /// `recordingIds`.
    pub index: u32,
    pub source: MediaSource,
    /// Where the audio is stored: `file:///…` (local directory) or
    /// `s3://bucket/key`.
    pub location: String,
    /// Size of the stored audio in bytes.
    pub size_bytes: u64,
    /// The `Content-Type` the provider served (without parameters), or
    /// `application/octet-stream` when it gave none.
    pub content_type: String,
    /// Lower-case hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// When the audio was stored (RFC 3339, UTC).
    pub archived_at: DateTime<Utc>,
}
