//! Archived recordings (`callstream.recordings.v1`): the engagement plays
//! the archived copy, not the provider's expiring link, whether the copy
//! is announced before the call is delivered or after.

use std::collections::BTreeMap;

use callstream_schemas::recording::{Media, RecordingArchived};

use super::{HubSpot, Object};
use crate::crm::{AttemptError, Session};

impl HubSpot {
    /// The playable URL of an archived copy of the media of `identities`:
    /// a recording before a voicemail.
    pub(super) async fn archived_url(
        &self,
        identities: &[&str],
    ) -> Result<Option<String>, AttemptError> {
        let Some(archived) = &self.archived else {
            return Ok(None);
        };
        let mut copies = self.db.archived(identities).await?;
        copies.sort_by_key(|(_, media, _, _)| media != Media::Recording.as_str());
        Ok(copies
            .iter()
            .find_map(|(_, _, _, location)| archived.url(location)))
    }

    /// An archived copy: remembered for the calls delivered later, and set
    /// on the engagement of a call delivered already.
    pub(super) async fn archived(
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
