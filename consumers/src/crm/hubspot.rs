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
//! `create_contacts`, else the engagement stays unassociated. The
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::BoxFuture;
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use callstream_schemas::call::Call;
use callstream_schemas::recording::{Media, RecordingArchived};
use callstream_schemas::{Direction, Event, Kind, Party, Status};

use super::settings::{ArchivedRecordings, TargetSettings};
use super::state::{ContactRow, Db, Held};
use super::{AttemptError, Mapping, Session, Work};

/// The unique property that names an object's call (or SMS).
pub const KEY_PROPERTY: &str = "callstream_call_key";
/// The property group it is created in.
const GROUP: &str = "callstream";

/// The HubSpot object a call or an SMS becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Objects whose `callstream_call_key` property is known to exist.
    ready: tokio::sync::Mutex<HashSet<Object>>,
}

impl std::hash::Hash for Object {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
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

    /// Makes sure `object` has the unique `callstream_call_key` property.
    async fn ensure_key_property(
        &self,
        s: &Session<'_>,
        object: Object,
    ) -> Result<(), AttemptError> {
        let mut ready = self.ready.lock().await;
        if ready.contains(&object) {
            return Ok(());
        }
        let kind = object.as_str();
        let found = s
            .send(
                Method::GET,
                &self.url(&format!("/crm/v3/properties/{kind}/{KEY_PROPERTY}")),
                None,
                &[StatusCode::NOT_FOUND],
            )
            .await?;
        if found.status == StatusCode::NOT_FOUND {
            s.send_json(
                Method::POST,
                &self.url(&format!("/crm/v3/properties/{kind}/groups")),
                &json!({"name": GROUP, "label": "callstream", "displayOrder": -1}),
                &[StatusCode::CONFLICT],
            )
            .await?;
            s.send_json(
                Method::POST,
                &self.url(&format!("/crm/v3/properties/{kind}")),
                &json!({
                    "name": KEY_PROPERTY,
                    "label": "callstream call key",
                    "description": "The call (or SMS) this object records, set by callstream: one object per call.",
                    "groupName": GROUP,
                    "type": "string",
                    "fieldType": "text",
                    "hasUniqueValue": true,
                }),
                &[StatusCode::CONFLICT],
            )
            .await?;
            tracing::info!(crm_target = %self.target, object = kind, property = KEY_PROPERTY, "created the unique key property in HubSpot");
        } else if found.json::<Value>()?["hasUniqueValue"] != Value::Bool(true) {
            tracing::warn!(
                crm_target = %self.target,
                object = kind,
                property = KEY_PROPERTY,
                "the key property exists without unique values: a create whose answer is lost \
                 can then leave a second object while HubSpot's search lags"
            );
        }
        ready.insert(object);
        Ok(())
    }

    /// The owner id of the internal party's e-mail, if HubSpot has one.
    async fn owner(
        &self,
        s: &Session<'_>,
        internal: &Party,
    ) -> Result<Option<String>, AttemptError> {
        let Some(email) = internal
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
        else {
            return Ok(None);
        };
        let email = email.to_lowercase();
        if let Some((owner, at)) = self.owners.lock().expect("owners lock").get(&email) {
            if at.elapsed() < self.owner_ttl {
                return Ok(owner.clone());
            }
        }
        let url = Url::parse_with_params(
            &self.url("/crm/v3/owners"),
            [("email", email.as_str()), ("limit", "1")],
        )
        .map_err(|e| AttemptError::Answer(e.to_string()))?;
        let found: Found = s.send(Method::GET, url.as_str(), None, &[]).await?.json()?;
        let owner = found.results.into_iter().next().map(|o| o.id);
        self.owners
            .lock()
            .expect("owners lock")
            .insert(email, (owner.clone(), Instant::now()));
        Ok(owner)
    }

    /// The contact of the external party's number: remembered, found, or
    /// (with `create_contacts`) created.
    async fn contact(
        &self,
        s: &Session<'_>,
        external: &Party,
    ) -> Result<Option<ContactRow>, AttemptError> {
        let Some(raw) = external
            .number
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        let normalized = normalize(raw, self.region);
        let number = normalized.as_ref().map_or(raw, |n| n.e164.as_str());
        if let Some(row) = self.db.contact(&self.target, number).await? {
            return Ok(Some(row));
        }
        let mut values = vec![number.to_string()];
        if raw != number {
            values.push(raw.to_string());
        }
        let mut groups = Vec::new();
        if let Some(n) = &normalized {
            groups.push(json!({"filters": [{
                "propertyName": "hs_searchable_calculated_phone_number",
                "operator": "EQ",
                "value": n.national,
            }]}));
        }
        for property in ["phone", "mobilephone"] {
            groups.push(json!({"filters": [{
                "propertyName": property,
                "operator": "IN",
                "values": values,
            }]}));
        }
        let found: Found = s
            .send_json(
                Method::POST,
                &self.url("/crm/v3/objects/contacts/search"),
                &json!({
                    "filterGroups": groups,
                    "properties": ["phone", "mobilephone", "associatedcompanyid"],
                    "limit": 1,
                }),
                &[],
            )
            .await?
            .json()?;
        let row = match found.results.into_iter().next() {
            Some(contact) => ContactRow {
                company_id: contact
                    .properties
                    .get("associatedcompanyid")
                    .cloned()
                    .flatten()
                    .filter(|c| !c.is_empty()),
                contact_id: contact.id,
            },
            None if self.create_contacts => {
                let mut properties = BTreeMap::from([("phone", number.to_string())]);
                if let Some(name) = external
                    .name
                    .as_deref()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                {
                    let (first, last) = name.split_once(' ').unwrap_or((name, ""));
                    properties.insert("firstname", first.to_string());
                    if !last.trim().is_empty() {
                        properties.insert("lastname", last.trim().to_string());
                    }
                }
                let created: Created = s
                    .send_json(
                        Method::POST,
                        &self.url("/crm/v3/objects/contacts"),
                        &Properties {
                            properties: &properties,
                        },
                        &[],
                    )
                    .await?
                    .json()?;
                ContactRow {
                    contact_id: created.id,
                    company_id: None,
                }
            }
            // Not remembered: the contact may be added in HubSpot later.
            None => return Ok(None),
        };
        self.db.set_contact(&self.target, number, &row).await?;
        Ok(Some(row))
    }

    /// The playable URL of an archived copy of the media of `identities`:
    /// a recording before a voicemail.
    async fn archived_url(&self, identities: &[&str]) -> Result<Option<String>, AttemptError> {
        let Some(archived) = &self.archived else {
            return Ok(None);
        };
        let mut copies = self.db.archived(identities).await?;
        copies.sort_by_key(|(_, media, _, _)| media != Media::Recording.as_str());
        Ok(copies
            .iter()
            .find_map(|(_, _, _, location)| archived.url(location)))
    }

    /// Creates the object with its associations: `None` when HubSpot
    /// already holds one with its key (`409`).
    async fn create(
        &self,
        s: &Session<'_>,
        eng: &Engagement<'_>,
        contact: Option<&ContactRow>,
    ) -> Result<Option<String>, AttemptError> {
        let mut associations = Vec::new();
        for (id, type_id) in self.association_targets(eng.object, contact) {
            associations.push(json!({
                "to": {"id": id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}],
            }));
        }
        let answer = s
            .send_json(
                Method::POST,
                &self.url(&format!("/crm/v3/objects/{}", eng.object.as_str())),
                &json!({"properties": eng.properties, "associations": associations}),
                &[StatusCode::CONFLICT],
            )
            .await?;
        if answer.status == StatusCode::CONFLICT {
            return Ok(None);
        }
        Ok(Some(answer.json::<Created>()?.id))
    }

    /// The contact (and, with `associate_companies`, its company) to
    /// associate with, and the association type of each.
    fn association_targets<'c>(
        &self,
        object: Object,
        contact: Option<&'c ContactRow>,
    ) -> Vec<(&'c str, u32)> {
        let Some(contact) = contact else {
            return Vec::new();
        };
        let (to_contact, to_company) = object.association_types();
        let mut targets = vec![(contact.contact_id.as_str(), to_contact)];
        if let (true, Some(company)) = (self.associate_companies, &contact.company_id) {
            targets.push((company.as_str(), to_company));
        }
        targets
    }

    /// Associates an existing object with the contact (and company).
    async fn associate(
        &self,
        s: &Session<'_>,
        object: Object,
        id: &str,
        contact: Option<&ContactRow>,
    ) -> Result<(), AttemptError> {
        let companies = contact.and_then(|c| c.company_id.as_deref());
        for (to, type_id) in self.association_targets(object, contact) {
            let to_type = if Some(to) == companies {
                "companies"
            } else {
                "contacts"
            };
            s.send_json(
                Method::PUT,
                &self.url(&format!(
                    "/crm/v4/objects/{}/{id}/associations/{to_type}/{to}",
                    object.as_str()
                )),
                &json!([{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": type_id}]),
                &[],
            )
            .await?;
        }
        Ok(())
    }

    /// The object HubSpot's search finds with `key`.
    async fn find(
        &self,
        s: &Session<'_>,
        object: Object,
        key: &str,
    ) -> Result<Option<String>, AttemptError> {
        let found: Found = s
            .send_json(
                Method::POST,
                &self.url(&format!("/crm/v3/objects/{}/search", object.as_str())),
                &json!({
                    "filterGroups": [{"filters": [{
                        "propertyName": KEY_PROPERTY, "operator": "EQ", "value": key,
                    }]}],
                    "properties": [KEY_PROPERTY],
                    "limit": 1,
                }),
                &[],
            )
            .await?
            .json()?;
        Ok(found.results.into_iter().next().map(|o| o.id))
    }

    async fn update(
        &self,
        s: &Session<'_>,
        object: Object,
        id: &str,
        properties: &BTreeMap<&'static str, String>,
    ) -> Result<(), AttemptError> {
        s.send_json(
            Method::PATCH,
            &self.url(&format!("/crm/v3/objects/{}/{id}", object.as_str())),
            &Properties { properties },
            &[],
        )
        .await
        .map(drop)
    }

    /// An archived copy: remembered for the calls delivered later, and set
    /// on the engagement of a call delivered already.
    async fn archived(
        &self,
        s: &Session<'_>,
        copy: &RecordingArchived,
    ) -> Result<(), AttemptError> {
        let Some(archived) = &self.archived else {
            return Ok(());
        };
        let position = i32::try_from(copy.index).unwrap_or(i32::MAX);
        self.db
            .set_archived(
                &copy.identity,
                copy.media.as_str(),
                position,
                &copy.location,
            )
            .await?;
        let Some(url) = archived.url(&copy.location) else {
            return Ok(());
        };
        if copy.media == Media::Voicemail {
            // A recording of the same event wins.
            let copies = self.db.archived(&[copy.identity.as_str()]).await?;
            if copies.iter().any(|(_, media, _, l)| {
                media == Media::Recording.as_str() && archived.url(l).is_some()
            }) {
                return Ok(());
            }
        }
        // Not delivered yet: its delivery finds the copy.
        let Some((object, id)) = self
            .db
            .object_of_event(&self.target, &copy.identity)
            .await?
        else {
            return Ok(());
        };
        if object != Object::Calls.as_str() {
            return Ok(());
        }
        let properties = BTreeMap::from([("hs_call_recording_url", url)]);
        self.update(s, Object::Calls, &id, &properties).await
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

/// A number in E.164 and its national significant number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub e164: String,
    pub national: String,
}

/// `raw` in E.164, read in `region` when it has no country code; `None`
/// when it is not a valid number there (an extension, a short code).
pub fn normalize(raw: &str, region: Option<phonenumber::country::Id>) -> Option<Normalized> {
    let international = raw.trim_start().starts_with('+') || raw.trim_start().starts_with("00");
    if region.is_none() && !international {
        return None;
    }
    let number = phonenumber::parse(region, raw).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    Some(Normalized {
        e164: number.format().mode(phonenumber::Mode::E164).to_string(),
        national: number.national().value().to_string(),
    })
}

/// The properties of a call's merged state.
fn call_state_properties(c: &Call) -> BTreeMap<&'static str, String> {
    let at = c
        .started_at
        .or(c.ended_at)
        .or_else(|| c.timeline.first().map(|s| s.received_at));
    let what = if c.status == Status::Voicemail {
        "voicemail"
    } else {
        "call"
    };
    let recording = c
        .recordings
        .iter()
        .chain(c.voicemail.iter())
        .find_map(|m| m.url.clone());
    engagement_properties(Fields {
        at,
        what,
        direction: c.direction,
        status: c.status,
        notes: c.notes.as_deref(),
        duration_seconds: c.duration_seconds,
        internal: &c.internal,
        external: &c.external,
        recording,
    })
}

fn call_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let recording = [&e.recording, &e.voicemail]
        .into_iter()
        .find_map(|m| m.as_ref()?.url.clone());
    engagement_properties(Fields {
        at: e.started_at.or(e.ended_at).or(Some(e.received_at)),
        what: kind_word(e.kind),
        direction: e.direction,
        status: e.status,
        notes: e.notes.as_deref(),
        duration_seconds: e.duration_seconds,
        internal: &e.internal,
        external: &e.external,
        recording,
    })
}

/// What a call engagement is made of, from a call or an event.
struct Fields<'a> {
    at: Option<DateTime<Utc>>,
    what: &'static str,
    direction: Direction,
    status: Status,
    notes: Option<&'a str>,
    duration_seconds: Option<f64>,
    internal: &'a Party,
    external: &'a Party,
    recording: Option<String>,
}

fn engagement_properties(f: Fields<'_>) -> BTreeMap<&'static str, String> {
    let mut p = BTreeMap::new();
    p.insert("hs_timestamp", timestamp(f.at.unwrap_or_else(Utc::now)));
    p.insert("hs_call_title", title(f.what, f.direction, f.external));
    let (from, to) = match f.direction {
        Direction::Inbound => (f.external, f.internal),
        _ => (f.internal, f.external),
    };
    let optional = [
        ("hs_call_body", f.notes.map(escape_html)),
        (
            "hs_call_direction",
            direction(f.direction).map(str::to_string),
        ),
        ("hs_call_status", status(f.status).map(str::to_string)),
        ("hs_call_duration", f.duration_seconds.and_then(millis)),
        ("hs_call_from_number", from.number.clone()),
        ("hs_call_to_number", to.number.clone()),
        ("hs_call_recording_url", f.recording),
    ];
    p.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v?))));
    p
}

fn sms_properties(e: &Event) -> BTreeMap<&'static str, String> {
    let mut body = format!(
        "<p>{}</p>",
        escape_html(&title(kind_word(e.kind), e.direction, &e.external))
    );
    if let Some(text) = &e.sms_body {
        body.push_str(&format!("<p>{}</p>", escape_html(text)));
    }
    BTreeMap::from([
        (
            "hs_timestamp",
            timestamp(e.started_at.or(e.ended_at).unwrap_or(e.received_at)),
        ),
        ("hs_communication_channel_type", "SMS".to_string()),
        ("hs_communication_logged_from", "CRM".to_string()),
        ("hs_communication_body", body),
    ])
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Sms => "SMS",
        Kind::Voicemail => "voicemail",
        _ => "call",
    }
}

/// "Inbound call from John Smith (0987654321)", "Outbound SMS to 0987654321".
fn title(what: &str, direction: Direction, external: &Party) -> String {
    let party = party(external);
    match direction {
        Direction::Inbound => format!("Inbound {what} from {party}"),
        Direction::Outbound => format!("Outbound {what} to {party}"),
        Direction::Internal => format!("Internal {what} with {party}"),
        Direction::Unknown => format!("{} with {party}", capitalized(what)),
    }
}

fn party(p: &Party) -> String {
    match (&p.name, &p.number) {
        (Some(name), Some(number)) => format!("{name} ({number})"),
        (Some(name), None) => name.clone(),
        (None, Some(number)) => number.clone(),
        (None, None) => "an unknown number".to_string(),
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn direction(d: Direction) -> Option<&'static str> {
    match d {
        Direction::Inbound => Some("INBOUND"),
        Direction::Outbound => Some("OUTBOUND"),
        Direction::Internal | Direction::Unknown => None,
    }
}

fn status(s: Status) -> Option<&'static str> {
    match s {
        Status::Answered | Status::Completed | Status::Ended => Some("COMPLETED"),
        Status::Missed | Status::Voicemail => Some("NO_ANSWER"),
        Status::Busy => Some("BUSY"),
        Status::Failed => Some("FAILED"),
        Status::Waiting => Some("QUEUED"),
        Status::Ringing => Some("RINGING"),
        Status::Unknown => None,
    }
}

fn millis(seconds: f64) -> Option<String> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| format!("{}", (seconds * 1000.0).round() as u64))
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonenumber::country::Id;

    #[test]
    fn numbers_become_e164_in_the_default_region() {
        let fr = Some(Id::FR);
        let e164 = |raw: &str, region| normalize(raw, region).map(|n| n.e164);
        for raw in [
            "09 87 65 43 21",
            "+33 9 87 65 43 21",
            "0033987654321",
            "+33 (0)9 87 65 43 21",
        ] {
            assert_eq!(e164(raw, fr).as_deref(), Some("+33987654321"), "{raw}");
        }
        assert_eq!(
            normalize("0987654321", fr).unwrap().national,
            "987654321",
            "what hs_searchable_calculated_phone_number holds"
        );
        assert_eq!(
            e164("+1 (415) 555-2671", fr).as_deref(),
            Some("+14155552671")
        );
        // Without a region only international numbers can be read.
        assert_eq!(e164("0987654321", None), None);
        assert_eq!(e164("+33987654321", None).as_deref(), Some("+33987654321"));
        // Extensions and short codes are not numbers to search for.
        assert_eq!(e164("1234", fr), None);
        assert_eq!(e164("anonymous", fr), None);
    }

    fn event(json: Value) -> Event {
        let mut base = json!({
            "event_id": "ea5dd800-642e-5d07-9154-ebd9939abf31",
            "identity": "onoff:acme:call:c-1",
            "fingerprint": "f",
            "provider": "onoff",
            "tenant": "acme",
            "kind": "call",
            "direction": "inbound",
            "status": "missed",
            "internal": {"number": "+33100000000"},
            "external": {"name": "Jane", "number": "0612345678"},
            "correlation": {"call_id": "c-1"},
            "received_at": "2023-05-20T14:32:01Z",
            "raw": {"topic": "callstream.raw.v1", "request_id": "r"},
        });
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_missed_call_and_its_voicemail_are_one_unanswered_call_with_the_voicemail() {
        let missed = event(json!({"started_at": "2023-05-20T14:30:00Z"}));
        let voicemail = event(json!({
            "identity": "onoff:acme:voicemail:c-1",
            "kind": "voicemail",
            "status": "voicemail",
            "voicemail": {"url": "https://media.example/vm.mp3"},
            "received_at": "2023-05-20T14:33:00Z",
        }));
        let call = Call::from_events(&[missed, voicemail]).unwrap();
        let p = call_state_properties(&call);
        assert_eq!(
            p["hs_call_title"],
            "Inbound voicemail from Jane (0612345678)"
        );
        assert_eq!(p["hs_call_status"], "NO_ANSWER");
        assert_eq!(p["hs_call_recording_url"], "https://media.example/vm.mp3");
        assert_eq!(p["hs_timestamp"], "2023-05-20T14:30:00.000Z");
        assert_eq!(p["hs_call_from_number"], "0612345678");
        assert_eq!(p["hs_call_to_number"], "+33100000000");
        assert!(!p.contains_key("hs_call_body"));
    }

    #[test]
    fn an_sms_is_a_communication_led_by_its_direction_and_numbers() {
        let sms = event(json!({
            "kind": "sms",
            "direction": "outbound",
            "status": "completed",
            "sms_body": "See you at 5 <3",
            "started_at": "2023-05-20T14:30:00Z",
        }));
        let p = sms_properties(&sms);
        assert_eq!(
            p["hs_communication_body"],
            "<p>Outbound SMS to Jane (0612345678)</p><p>See you at 5 &lt;3</p>"
        );
        assert_eq!(p["hs_communication_channel_type"], "SMS");
        assert_eq!(p["hs_timestamp"], "2023-05-20T14:30:00.000Z");
    }
}
