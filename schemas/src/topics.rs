//! Every topic callstream reads or writes. Names are configurable; these are
//! the logical topics and their defaults, so code never spells a topic name.

use serde::{Deserialize, Serialize};

/// A logical topic. Also used as the bounded `topic` label in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// Every authenticated delivery, byte-exact: the system of record.
    Raw,
    /// One normalized [`crate::Event`] per delivery (resends included).
    Events,
    /// Deliveries that authenticated but could not be normalized.
    Dlq,
    /// Normalized events after deduplication: each event once, updates as revisions.
    EventsUnique,
    /// The dedup consumer's state changelog (compacted, co-partitioned with `Events`).
    DedupState,
    /// CRM deliveries that exhausted their retries.
    CrmDlq,
    /// Archived recordings and voicemails.
    Recordings,
    /// Recordings or voicemails that could not be archived.
    RecordingsDlq,
    /// The current state of each call ([`crate::call::Call`]), keyed by
    /// its call key; compacted.
    Calls,
}

impl Topic {
    pub const ALL: [Topic; 9] = [
        Topic::Raw,
        Topic::Events,
        Topic::Dlq,
        Topic::EventsUnique,
        Topic::DedupState,
        Topic::CrmDlq,
        Topic::Recordings,
        Topic::RecordingsDlq,
        Topic::Calls,
    ];

    /// The topic's default name.
    pub fn default_name(self) -> &'static str {
        match self {
            Topic::Raw => "callstream.raw.v1",
            Topic::Events => "callstream.events.v1",
            Topic::Dlq => "callstream.dlq.v1",
            Topic::EventsUnique => "callstream.events.unique.v1",
            Topic::DedupState => "callstream.dedup.state.v1",
            Topic::CrmDlq => "callstream.crm.dlq.v1",
            Topic::Recordings => "callstream.recordings.v1",
            Topic::RecordingsDlq => "callstream.recordings.dlq.v1",
            Topic::Calls => "callstream.calls.v1",
        }
    }

    /// Short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Topic::Raw => "raw",
            Topic::Events => "events",
            Topic::Dlq => "dlq",
            Topic::EventsUnique => "events_unique",
            Topic::DedupState => "dedup_state",
            Topic::CrmDlq => "crm_dlq",
            Topic::Recordings => "recordings",
            Topic::RecordingsDlq => "recordings_dlq",
            Topic::Calls => "calls",
        }
    }
}
