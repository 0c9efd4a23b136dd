//! HubSpot: one CRM object per call, updated in place, on the right
//! contact and owner.
//!
//! * A call (`callstream.calls.v1`, its merged state) → one call
//!   engagement (`/crm/v3/objects/calls`). A voicemail is a call that
//!   nobody answered (`NO_ANSWER`), titled "voicemail", with the voicemail
//!   as the recording. Each new revision of the call is a `PATCH` of the
//!   same engagement.
//! * An SMS (an event that names no call) → one communication (channel
//!   `SMS`): HubSpot has no SMS call type, and logging texts as calls would
//!   distort call counts and durations. Communications have no number
//!   fields, so the direction and numbers lead the body. An event of
//!   another kind that names no call is a call engagement of its own.
//!
//! **One object per call.** The object carries the unique property
//! `callstream_call_key` (the call key, or an SMS's identity), created on
//! first use with `hasUniqueValue` in a `callstream` property group. The
//! target's PostgreSQL state (`crm_objects`) maps each key to its object
//! and the revision it holds: a revision already held is skipped (a
//! replay sends nothing), a newer one is a `PATCH`. Before a create the
//! key is noted as "creating"; if the answer is lost (a 502 after HubSpot
//! stored it, a timeout, a crash), the next attempt looks the object up by
//! `callstream_call_key` first. HubSpot's search lags its writes, so a
//! create may still be sent; HubSpot refuses it (`409`, the value is
//! unique) and the attempt is retried until the search finds the object.
//!
//! **Contact.** The external party's number, normalized to E.164 (numbers
//! without a country code in `default_region`), is looked up in
//! `crm_contacts`, then searched: `hs_searchable_calculated_phone_number`
//! (the national number), `phone`, `mobilephone`. Not found: created when
//! `create_contacts`, else the engagement stays unassociated. A created
//! contact carries the unique property `callstream_phone` (its E.164
//! number; the search includes it), so a create whose answer was lost is
//! refused (`409`) and the contact is looked up by it instead. The
//! association is HubSpot-defined type 194 (call → contact; 81 for a
//! communication), and with `associate_companies` also the contact's
//! company (182; 87).
//!
//! **Owner.** `hubspot_owner_id` is the owner whose e-mail is the internal
//! party's (`/crm/v3/owners?email=`), remembered for `owner_cache_secs`
//! (a miss too); no match leaves it empty.
//!
//! **Recordings.** With `archived_recordings`, a copy archived by
//! `callstream-recordings` replaces the provider's expiring link in
//! `hs_call_recording_url`, whether it is archived before or after the
//! call is delivered.
//!
//! | property | from |
//! |---|---|
//! | `hs_timestamp` | `started_at`, else `ended_at`, else when first received (RFC 3339, ms) |
//! | `hs_call_title` | e.g. "Inbound call from John Smith (0987654321)" |
//! | `hs_call_body` | `notes`, HTML-escaped (HubSpot renders it as rich text) |
//! | `hs_call_direction` | `INBOUND` / `OUTBOUND`; absent for internal and unknown |
//! | `hs_call_status` | answered → `COMPLETED`, missed and voicemail → `NO_ANSWER`, busy → `BUSY`, failed → `FAILED`; absent when unknown |
//! | `hs_call_duration` | `duration_seconds` × 1000 (HubSpot counts milliseconds) |
//! | `hs_call_from_number` / `hs_call_to_number` | inbound: external → internal; otherwise internal → external |
//! | `hs_call_recording_url` | the archived copy, else the first recording's `url`, else the voicemail's |
//! | `hubspot_owner_id` | the owner with the internal party's e-mail |
//! | `callstream_call_key` | the call key (an SMS: its identity) |
//!
//! Values are strings, as in HubSpot's API model; absent fields are left
//! out rather than sent empty.

mod objects;
mod parties;
mod properties;
mod recordings;

pub use parties::{normalize, Normalized};
use properties::{call_properties, call_state_properties, sms_properties};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use callstream_schemas::{Kind, Party};

use super::settings::{ArchivedRecordings, TargetSettings};
use super::state::{Db, Held};
use super::{AttemptError, Mapping, Session, Work};

/// The unique property that names an object's call (or SMS).
pub const KEY_PROPERTY: &str = "callstream_call_key";
/// The property group it is created in.
const GROUP: &str = "callstream";
/// The unique property of a contact callstream created: its number in
/// E.164 (as normalized), so a create whose answer was lost is refused
/// (`409`) rather than repeated.
pub const CONTACT_KEY_PROPERTY: &str = "callstream_phone";

/// A property callstream creates on first use, with unique values.
struct Unique {
    name: &'static str,
    label: &'static str,
    description: &'static str,
}

const CALL_KEY: Unique = Unique {
    name: KEY_PROPERTY,
    label: "callstream call key",
    description: "The call (or SMS) this object records, set by callstream: one object per call.",
};

const CONTACT_KEY: Unique = Unique {
    name: CONTACT_KEY_PROPERTY,
    label: "callstream phone",
    description: "The number (E.164) callstream created this contact for: one contact per number.",
};

/// The HubSpot object a call or an SMS becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Object {
    Calls,
    Communications,
}

impl Object {
    fn as_str(self) -> &'static str {
        match self {
            Object::Calls => "calls",
            Object::Communications => "communications",
        }
    }

    /// HubSpot-defined association types: to a contact, to a company.
    fn association_types(self) -> (u32, u32) {
        match self {
            Object::Calls => (194, 182),
            Object::Communications => (81, 87),
        }
    }
}

/// What one call or SMS becomes, before the look-ups.
struct Engagement<'a> {
    object: Object,
    key: &'a str,
    revision: i64,
    properties: BTreeMap<&'static str, String>,
    internal: &'a Party,
    external: &'a Party,
    /// Its events, whose archived recordings it may point at.
    identities: Vec<&'a str>,
}

pub struct HubSpot {
    target: String,
    base: String,
    db: Arc<Db>,
    region: Option<phonenumber::country::Id>,
    create_contacts: bool,
    associate_companies: bool,
    owner_ttl: Duration,
    archived: Option<ArchivedRecordings>,
    /// Owner id (or none) by lower-case e-mail, and when it was looked up.
    owners: std::sync::Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// Object types whose unique property (`callstream_call_key`, or
    /// `callstream_phone` for contacts) is known to exist.
    ready: tokio::sync::Mutex<HashSet<&'static str>>,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct Found {
    #[serde(default)]
    results: Vec<FoundObject>,
}

#[derive(Deserialize)]
struct FoundObject {
    id: String,
    #[serde(default)]
    properties: HashMap<String, Option<String>>,
}

#[derive(Serialize)]
struct Properties<'a> {
    properties: &'a BTreeMap<&'static str, String>,
}

impl HubSpot {
    /// `base` is the API base (`https://api.hubapi.com`), possibly with a path.
    pub(crate) fn new(
        target: &str,
        base: &Url,
        settings: &TargetSettings,
        db: Arc<Db>,
    ) -> Result<HubSpot, String> {
        let base = base.as_str().trim_end_matches('/').to_string();
        Url::parse(&format!("{base}/crm/v3/objects/calls")).map_err(|e| e.to_string())?;
        Ok(HubSpot {
            target: target.to_string(),
            base,
            db,
            region: settings.region(),
            create_contacts: settings.create_contacts.unwrap_or(false),
            associate_companies: settings.associate_companies.unwrap_or(false),
            owner_ttl: Duration::from_secs(settings.owner_cache_secs.unwrap_or(3600)),
            archived: settings.archived_recordings.clone(),
            owners: Default::default(),
            ready: Default::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates or updates the object of `eng`, on its contact and owner.
    async fn upsert(&self, s: &Session<'_>, mut eng: Engagement<'_>) -> Result<(), AttemptError> {
        let object = eng.object.as_str();
        let held = self.db.object(&self.target, eng.key).await?;
        if let Some(held) = &held {
            if held.object_id.is_some() && held.revision >= eng.revision {
                return Ok(()); // delivered before: a replay, or an older state
            }
        }
        self.ensure_key_property(s, eng.object).await?;
        if let Some(owner) = self.owner(s, eng.internal).await? {
            eng.properties.insert("hubspot_owner_id", owner);
        }
        let contact = self.contact(s, eng.external).await?;
        if eng.object == Object::Calls {
            if let Some(url) = self.archived_url(&eng.identities).await? {
                eng.properties.insert("hs_call_recording_url", url);
            }
        }
        eng.properties.insert(KEY_PROPERTY, eng.key.to_string());
        let known = held.as_ref().and_then(|h| h.object_id.clone());
        let id = match known {
            Some(id) => {
                self.update(s, eng.object, &id, &eng.properties).await?;
                let had_contact = held.as_ref().is_some_and(|h| h.contact_id.is_some());
                if !had_contact {
                    self.associate(s, eng.object, &id, contact.as_ref()).await?;
                }
                id
            }
            None => {
                // A row without an object: an earlier create's answer was lost.
                let found = if held.is_some() {
                    self.find(s, eng.object, eng.key).await?
                } else {
                    self.db.creating(&self.target, eng.key, object).await?;
                    None
                };
                match found {
                    Some(id) => {
                        self.update(s, eng.object, &id, &eng.properties).await?;
                        self.associate(s, eng.object, &id, contact.as_ref()).await?;
                        id
                    }
                    None => match self.create(s, &eng, contact.as_ref()).await? {
                        Some(id) => id,
                        None => {
                            let id = self.find(s, eng.object, eng.key).await?.ok_or_else(|| {
                                AttemptError::NotYet(format!(
                                    "HubSpot holds a {object} object with {KEY_PROPERTY} {} (409) \
                                     that its search does not find yet",
                                    eng.key
                                ))
                            })?;
                            self.update(s, eng.object, &id, &eng.properties).await?;
                            id
                        }
                    },
                }
            }
        };
        let contact_id = contact.as_ref().map(|c| c.contact_id.as_str());
        let sent_recording = eng.properties.get("hs_call_recording_url").cloned();
        self.db
            .holds(
                &self.target,
                eng.key,
                Held {
                    object_type: object,
                    object_id: &id,
                    revision: eng.revision,
                    contact_id,
                    identities: &eng.identities,
                },
            )
            .await?;
        // A copy archived while this was sent found no object to update:
        // now there is one.
        if eng.object == Object::Calls {
            if let Some(url) = self.archived_url(&eng.identities).await? {
                if sent_recording.as_deref() != Some(url.as_str()) {
                    let properties = BTreeMap::from([("hs_call_recording_url", url)]);
                    self.update(s, eng.object, &id, &properties).await?;
                }
            }
        }
        Ok(())
    }
}

impl Mapping for HubSpot {
    fn send<'a>(
        &'a self,
        session: &'a Session<'a>,
        work: &'a Work<'a>,
    ) -> BoxFuture<'a, Result<(), AttemptError>> {
        Box::pin(async move {
            let eng = match *work {
                Work::Call { call, revision } => Engagement {
                    object: Object::Calls,
                    key: &call.call_key,
                    revision,
                    properties: call_state_properties(call),
                    internal: &call.internal,
                    external: &call.external,
                    identities: call.timeline.iter().map(|s| s.identity.as_str()).collect(),
                },
                Work::Event { event, revision } => Engagement {
                    object: if event.kind == Kind::Sms {
                        Object::Communications
                    } else {
                        Object::Calls
                    },
                    key: &event.identity,
                    revision,
                    properties: if event.kind == Kind::Sms {
                        sms_properties(event)
                    } else {
                        call_properties(event)
                    },
                    internal: &event.internal,
                    external: &event.external,
                    identities: vec![event.identity.as_str()],
                },
                Work::Recording(copy) => return self.archived(session, copy).await,
            };
            self.upsert(session, eng).await
        })
    }

    fn takes_recordings(&self) -> bool {
        self.archived.is_some()
    }
}
