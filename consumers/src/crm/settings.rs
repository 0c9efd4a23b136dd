//! `[crm]` settings: the consumer-group prefix and one table per target.
//! Checked at start-up; every error names the setting it is about.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use callstream_schemas::Kind;

use callstream_runtime::config::{invalid, ConfigError};

/// HubSpot's API base, the default `url` of a `hubspot` target.
pub(crate) const HUBSPOT_API: &str = "https://api.hubapi.com";

/// Longest a target may spend on one record (all attempts, back-off and
/// rate-limit waits): it holds the target's later records, and beyond an
/// hour a stuck record is better dead-lettered than held. (The consumer
/// keeps polling Kafka meanwhile: `callstream_kafka::per_record`.)
const MAX_RECORD_MS: u64 = 3_600_000;

/// Headers the consumer sets itself on every request.
const RESERVED_HEADERS: [&str; 3] = ["content-type", "idempotency-key", "x-callstream-revision"];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmSettings {
    /// Each target consumes in its own group, `<group_prefix>-<target>`, so
    /// each keeps its own position and a slow target holds back no other.
    pub group_prefix: String,
    /// The CRMs to deliver to, by name (`[crm.targets.<name>]`). The name
    /// appears in the group id, metrics and dead letters: lower-case
    /// letters, digits, `-` and `_`. Not serialized: no default target.
    #[serde(skip_serializing)]
    pub targets: BTreeMap<String, TargetSettings>,
}

impl Default for CrmSettings {
    fn default() -> Self {
        CrmSettings {
            group_prefix: "callstream-crm".into(),
            targets: BTreeMap::new(),
        }
    }
}

/// What a target's `Idempotency-Key` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdempotencyKey {
    /// The event (`<event_id>`): every revision of an event shares the key,
    /// for CRMs that upsert by key and order by `X-Callstream-Revision`.
    #[default]
    Event,
    /// The request (`<event_id>:<revision>`): for CRMs that follow the IETF
    /// Idempotency-Key draft and refuse (`422`) a known key with a new body,
    /// which an update of the event would otherwise be.
    Revision,
}

/// Which request a target gets for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// `POST url` with `{"revision": n, "event": <normalized event>}`.
    Webhook,
    /// HubSpot CRM objects API: calls, voicemails and recordings as call
    /// engagements, SMS as communications (see [`super::hubspot`]).
    Hubspot,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSettings {
    /// `webhook` or `hubspot`.
    pub kind: TargetKind,
    /// Webhook: the URL to POST to (required). HubSpot: the API base
    /// (default `https://api.hubapi.com`; tests point it at a local server).
    pub url: Option<String>,
    /// Extra request headers. Values are secrets (they often carry API keys):
    /// never logged. `Content-Type`, `Idempotency-Key` and
    /// `X-Callstream-Revision` are set by the consumer and cannot be given.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretString>,
    /// Sent as `Authorization: Bearer <token>` (a HubSpot private-app token).
    pub bearer_token: Option<SecretString>,
    /// One attempt (connect, send, response body) must finish within this.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per event, the first included; after the last, the event is
    /// dead-lettered. Errors that retrying cannot fix (4xx other than 401,
    /// 403, 408 and 429) are dead-lettered after one.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Back-off before the first retry; doubled for each further retry, with
    /// random jitter so that retries of many consumers spread out.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Upper bound of one back-off, including a `Retry-After` the CRM asks for.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Requests per second to this target (retries included), spaced evenly;
    /// fractions allowed (`0.5` = one every two seconds). Per process.
    #[serde(default = "default_rate_per_second")]
    pub rate_per_second: f64,
    /// `event` (default: `<event_id>`, shared by the event's revisions) or
    /// `revision` (`<event_id>:<revision>`, one per request content).
    #[serde(default)]
    pub idempotency_key: IdempotencyKey,
    /// Event kinds delivered; others are committed without a request.
    /// `call_progress` (live steps of a call) is never delivered. A call
    /// is delivered when `call`, `voicemail` or `recording` is listed.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<Kind>,
    /// HubSpot: the region (ISO 3166 code, `FR`, `US`) of numbers written
    /// without a country code, to find contacts by their E.164 number.
    /// Without it only international numbers (`+…`, `00…`) are normalized.
    pub default_region: Option<String>,
    /// HubSpot: create a contact for an external number that matches none
    /// (default `false`: the engagement is then left unassociated).
    pub create_contacts: Option<bool>,
    /// HubSpot: also associate the engagement with the contact's company
    /// (default `false`).
    pub associate_companies: Option<bool>,
    /// HubSpot: how long an owner looked up by e-mail (or found missing)
    /// is remembered (default 3600 s).
    pub owner_cache_secs: Option<u64>,
    /// HubSpot: where archived recordings can be played from.
    pub archived_recordings: Option<ArchivedRecordings>,
}

/// How an archived recording's location (`callstream.recordings.v1`)
/// becomes a URL HubSpot can play: a location starting with
/// `location_prefix` gets it replaced by `url_prefix`
/// (`s3://callstream-audio/` → `https://audio.example.com/`). Locations
/// outside it keep the provider's link.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivedRecordings {
    pub location_prefix: String,
    pub url_prefix: String,
}

impl ArchivedRecordings {
    /// The URL of an archived copy at `location`, if it is under the prefix.
    pub fn url(&self, location: &str) -> Option<String> {
        let rest = location.strip_prefix(&self.location_prefix)?;
        Some(format!("{}{rest}", self.url_prefix))
    }
}

fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_attempts() -> u32 {
    8
}
fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_rate_per_second() -> f64 {
    10.0
}
fn default_kinds() -> Vec<Kind> {
    vec![Kind::Call, Kind::Sms, Kind::Voicemail, Kind::Recording]
}

impl CrmSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_prefix.trim().is_empty() {
            return Err(invalid("crm.group_prefix", "must not be empty"));
        }
        for (name, target) in &self.targets {
            target.validate(name)?;
        }
        Ok(())
    }

    /// The CRM consumer needs at least one target; the other consumers share
    /// these settings and do not, so this is not part of [`Self::validate`].
    pub(crate) fn require_targets(&self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            return Err(invalid(
                "crm.targets",
                "is empty: configure at least one target ([crm.targets.<name>] with kind and url)",
            ));
        }
        Ok(())
    }

    pub fn group_id(&self, target: &str) -> String {
        format!("{}-{target}", self.group_prefix)
    }
}

impl TargetSettings {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("crm.targets.{name}.{field}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid(
                format!("crm.targets.{name}"),
                "has an invalid name: use lower-case letters, digits, `-` and `_`",
            ));
        }
        self.base_url()
            .map_err(|problem| invalid(setting("url"), problem))?;
        for (header, value) in &self.headers {
            let field = setting(&format!("headers.{header}"));
            let parsed = HeaderName::try_from(header.as_str())
                .map_err(|_| invalid(&field, "is not a valid header name"))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(invalid(field, "is set by the consumer itself"));
            }
            if parsed == reqwest::header::AUTHORIZATION && self.bearer_token.is_some() {
                return Err(invalid(field, "conflicts with bearer_token: set only one"));
            }
            HeaderValue::try_from(value.expose_secret())
                .map_err(|_| invalid(field, "is not a valid header value"))?;
        }
        if let Some(token) = &self.bearer_token {
            HeaderValue::try_from(format!("Bearer {}", token.expose_secret()))
                .map_err(|_| invalid(setting("bearer_token"), "is not a valid header value"))?;
        }
        if self.timeout_ms == 0 {
            return Err(invalid(setting("timeout_ms"), "must be greater than 0"));
        }
        if self.max_attempts == 0 {
            return Err(invalid(setting("max_attempts"), "must be at least 1"));
        }
        if self.initial_backoff_ms == 0 {
            return Err(invalid(
                setting("initial_backoff_ms"),
                "must be greater than 0",
            ));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(invalid(
                setting("max_backoff_ms"),
                "must be at least initial_backoff_ms",
            ));
        }
        if !(self.rate_per_second.is_finite() && self.rate_per_second > 0.0) {
            return Err(invalid(
                setting("rate_per_second"),
                "must be greater than 0",
            ));
        }
        if self.kinds.is_empty() {
            return Err(invalid(setting("kinds"), "must name at least one kind"));
        }
        if self.kinds.contains(&Kind::CallProgress) {
            return Err(invalid(
                setting("kinds"),
                "must not contain call_progress (live steps of a call, not a record for a CRM)",
            ));
        }
        self.validate_hubspot(name)?;
        if self.worst_case_record().as_millis() > u128::from(MAX_RECORD_MS) {
            return Err(invalid(
                setting("max_attempts"),
                format!(
                    "with timeout_ms, max_backoff_ms and rate_per_second lets one event take up to {} s; \
                     keep it under {} s",
                    self.worst_case_record().as_secs(),
                    MAX_RECORD_MS / 1000
                ),
            ));
        }
        Ok(())
    }

    /// The HubSpot-only settings: refused on other targets, checked on
    /// HubSpot ones.
    fn validate_hubspot(&self, name: &str) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("crm.targets.{name}.{field}");
        if self.kind != TargetKind::Hubspot {
            let given = [
                ("default_region", self.default_region.is_some()),
                ("create_contacts", self.create_contacts.is_some()),
                ("associate_companies", self.associate_companies.is_some()),
                ("owner_cache_secs", self.owner_cache_secs.is_some()),
                ("archived_recordings", self.archived_recordings.is_some()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
                return Err(invalid(setting(field), "applies to hubspot targets only"));
            }
            return Ok(());
        }
        if let Some(region) = &self.default_region {
            region.parse::<phonenumber::country::Id>().map_err(|_| {
                invalid(
                    setting("default_region"),
                    format!("`{region}` is not a region code (ISO 3166, e.g. FR, US, GB)"),
                )
            })?;
        }
        if let Some(archived) = &self.archived_recordings {
            let url = Url::parse(&archived.url_prefix).map_err(|e| {
                invalid(
                    setting("archived_recordings.url_prefix"),
                    format!("is not a URL ({e})"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(invalid(
                    setting("archived_recordings.url_prefix"),
                    "must be an https:// URL (HubSpot plays recordings over HTTPS only)",
                ));
            }
            if archived.location_prefix.is_empty() {
                return Err(invalid(
                    setting("archived_recordings.location_prefix"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }

    /// The region of numbers without a country code, if configured.
    pub(crate) fn region(&self) -> Option<phonenumber::country::Id> {
        self.default_region.as_deref()?.parse().ok()
    }

    /// The URL of a webhook, or HubSpot's API base.
    pub fn base_url(&self) -> Result<Url, String> {
        let raw = match (self.kind, &self.url) {
            (_, Some(url)) => url.as_str(),
            (TargetKind::Hubspot, None) => HUBSPOT_API,
            (TargetKind::Webhook, None) => return Err("is required for a webhook target".into()),
        };
        let url = Url::parse(raw).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        Ok(url)
    }

    // These accessors are spelled again in `recordings/settings.rs`, on
    // purpose: serde cannot flatten a shared section into one under
    // `deny_unknown_fields`, and the keys are each section's own.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    /// Time between two requests at `rate_per_second`.
    pub(crate) fn request_interval(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.rate_per_second).unwrap_or(Duration::MAX)
    }

    /// The most one event can take before it is delivered or dead-lettered:
    /// every attempt timing out, each after a rate-limit wait, with the
    /// longest back-off between them.
    pub(crate) fn worst_case_record(&self) -> Duration {
        let attempts = self.max_attempts;
        self.timeout()
            .saturating_add(self.request_interval())
            .saturating_mul(attempts)
            .saturating_add(
                self.max_backoff()
                    .saturating_mul(attempts.saturating_sub(1)),
            )
    }
}
