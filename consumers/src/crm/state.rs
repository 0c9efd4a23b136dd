//! What HubSpot targets remember in PostgreSQL (migration
//! `V9__crm_objects.sql`): the object each call or SMS became, the contact
//! found for each number, and the archived copies of recordings. The
//! local mapping is the first source; HubSpot's search (which lags its
//! writes) is asked only when a create may have happened unrecorded.
//!
//! One connection, opened (and the migrations applied) on first use and
//! opened again after it broke. Its errors are [`AttemptError::Store`]:
//! the delivery waits for the database, it is never dead-lettered for it.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::deliver::AttemptError;
use super::settings::TargetKind;
use super::{CrmError, CrmSettings};
use crate::pg;

/// The state's connection.
pub(crate) struct Db {
    url: SecretString,
    client: Mutex<Option<Arc<Client>>>,
}

/// What a target holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectRow {
    /// `None`: a create was sent and its answer is unknown.
    pub object_id: Option<String>,
    pub revision: i64,
    pub contact_id: Option<String>,
}

/// What a key is in HubSpot after a delivery.
pub(crate) struct Held<'a> {
    pub object_type: &'a str,
    pub object_id: &'a str,
    /// The revision the object holds now.
    pub revision: i64,
    pub contact_id: Option<&'a str>,
    /// The events it records.
    pub identities: &'a [&'a str],
}

/// A contact found or created for a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContactRow {
    pub contact_id: String,
    pub company_id: Option<String>,
}

fn store_error(e: impl std::fmt::Display) -> AttemptError {
    AttemptError::Store(e.to_string())
}

impl Db {
    /// The state of the HubSpot targets among `crm`'s: `None` without
    /// one; an error without `database_url` or with one that is not a
    /// PostgreSQL URL. Nothing is connected yet.
    pub async fn for_targets(
        crm: &CrmSettings,
        url: Option<&SecretString>,
    ) -> Result<Option<Arc<Db>>, CrmError> {
        if !crm.targets.values().any(|t| t.kind == TargetKind::Hubspot) {
            return Ok(None);
        }
        let url = url.ok_or_else(|| {
            callstream_runtime::config::invalid(
                "database_url",
                "is required by hubspot targets (their call → object mapping); set DATABASE_URL",
            )
        })?;
        pg::config(secrecy::ExposeSecret::expose_secret(url))
            .map_err(|e| CrmError::Database(format!("database_url: {e}")))?;
        Ok(Some(Arc::new(Db {
            url: url.clone(),
            client: Mutex::new(None),
        })))
    }

    async fn client(&self) -> Result<Arc<Client>, AttemptError> {
        let mut held = self.client.lock().await;
        if let Some(client) = held.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let mut client = pg::connect(&self.url).await.map_err(store_error)?;
        pg::migrate(&mut client).await.map_err(store_error)?;
        let client = Arc::new(client);
        *held = Some(client.clone());
        Ok(client)
    }

    pub async fn object(&self, target: &str, key: &str) -> Result<Option<ObjectRow>, AttemptError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT object_id, revision, contact_id FROM crm_objects \
                 WHERE target = $1 AND key = $2",
                &[&target, &key],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| ObjectRow {
            object_id: r.get(0),
            revision: r.get(1),
            contact_id: r.get(2),
        }))
    }

    /// Notes that a create is about to be sent, so that whoever tries
    /// next looks the object up first.
    pub async fn creating(
        &self,
        target: &str,
        key: &str,
        object_type: &str,
    ) -> Result<(), AttemptError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO crm_objects (target, key, object_type) VALUES ($1, $2, $3) \
                 ON CONFLICT (target, key) DO NOTHING",
                &[&target, &key, &object_type],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// Records what `key` is now in HubSpot.
    pub async fn holds(&self, target: &str, key: &str, held: Held<'_>) -> Result<(), AttemptError> {
        let Held {
            object_type,
            object_id,
            revision,
            contact_id,
            identities,
        } = held;
        self.client()
            .await?
            .execute(
                "INSERT INTO crm_objects \
                   (target, key, object_type, object_id, revision, contact_id, identities) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (target, key) DO UPDATE SET object_id = EXCLUDED.object_id, \
                   revision = GREATEST(crm_objects.revision, EXCLUDED.revision), \
                   contact_id = COALESCE(EXCLUDED.contact_id, crm_objects.contact_id), \
                   identities = EXCLUDED.identities, updated_at = now()",
                &[
                    &target,
                    &key,
                    &object_type,
                    &object_id,
                    &revision,
                    &contact_id,
                    &identities,
                ],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub async fn contact(
        &self,
        target: &str,
        number: &str,
    ) -> Result<Option<ContactRow>, AttemptError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT contact_id, company_id FROM crm_contacts WHERE target = $1 AND number = $2",
                &[&target, &number],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| ContactRow {
            contact_id: r.get(0),
            company_id: r.get(1),
        }))
    }

    pub async fn set_contact(
        &self,
        target: &str,
        number: &str,
        contact: &ContactRow,
    ) -> Result<(), AttemptError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO crm_contacts (target, number, contact_id, company_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (target, number) DO UPDATE \
                 SET contact_id = EXCLUDED.contact_id, company_id = EXCLUDED.company_id",
                &[&target, &number, &contact.contact_id, &contact.company_id],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The archived copies of the media of `identities`: (identity, media,
    /// position, location), in that order.
    pub async fn archived(
        &self,
        identities: &[&str],
    ) -> Result<Vec<(String, String, i32, String)>, AttemptError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT identity, media, position, location FROM crm_recordings \
                 WHERE identity = ANY($1) ORDER BY identity, media, position",
                &[&identities],
            )
            .await
            .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect())
    }

    pub async fn set_archived(
        &self,
        identity: &str,
        media: &str,
        position: i32,
        location: &str,
    ) -> Result<(), AttemptError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO crm_recordings (identity, media, position, location) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (identity, media, position) \
                 DO UPDATE SET location = EXCLUDED.location",
                &[&identity, &media, &position, &location],
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The object that records the event `identity`, if one does yet.
    pub async fn object_of_event(
        &self,
        target: &str,
        identity: &str,
    ) -> Result<Option<(String, String)>, AttemptError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT object_type, object_id FROM crm_objects \
                 WHERE target = $1 AND identities @> ARRAY[$2::text] AND object_id IS NOT NULL \
                 LIMIT 1",
                &[&target, &identity],
            )
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }
}
