//! HubSpot's objects API as the upsert uses it: the key property, create,
//! search by key, update, and associations.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{
    Created, Engagement, Found, HubSpot, Object, Properties, Unique, CALL_KEY, GROUP, KEY_PROPERTY,
};
use crate::crm::state::ContactRow;
use crate::crm::{AttemptError, Session};

impl HubSpot {
    /// Makes sure `object` has the unique `callstream_call_key` property.
    pub(super) async fn ensure_key_property(
        &self,
        s: &Session<'_>,
        object: Object,
    ) -> Result<(), AttemptError> {
        self.ensure_unique(s, object.as_str(), &CALL_KEY).await
    }

    /// Makes sure objects of `kind` have `property`, with unique values.
    pub(super) async fn ensure_unique(
        &self,
        s: &Session<'_>,
        kind: &'static str,
        property: &Unique,
    ) -> Result<(), AttemptError> {
        let mut ready = self.ready.lock().await;
        if ready.contains(&kind) {
            return Ok(());
        }
        let name = property.name;
        let found = s
            .send(
                Method::GET,
                &self.url(&format!("/crm/v3/properties/{kind}/{name}")),
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
                    "name": name,
                    "label": property.label,
                    "description": property.description,
                    "groupName": GROUP,
                    "type": "string",
                    "fieldType": "text",
                    "hasUniqueValue": true,
                }),
                &[StatusCode::CONFLICT],
            )
            .await?;
            tracing::info!(crm_target = %self.target, object = kind, property = name, "created a unique property in HubSpot");
        } else if found.json::<Value>()?["hasUniqueValue"] != Value::Bool(true) {
            tracing::warn!(
                crm_target = %self.target,
                object = kind,
                property = name,
                "the property exists without unique values: a create whose answer is lost \
                 can then leave a second object while HubSpot's search lags"
            );
        }
        ready.insert(kind);
        Ok(())
    }

    /// Creates the object with its associations: `None` when HubSpot
    /// already holds one with its key (`409`).
    pub(super) async fn create(
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
    pub(super) async fn associate(
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
    pub(super) async fn find(
        &self,
        s: &Session<'_>,
        object: Object,
        key: &str,
    ) -> Result<Option<String>, AttemptError> {
        self.find_by(s, object.as_str(), KEY_PROPERTY, key).await
    }

    /// The object of `kind` HubSpot's search finds with `property` = `value`.
    pub(super) async fn find_by(
        &self,
        s: &Session<'_>,
        kind: &str,
        property: &str,
        value: &str,
    ) -> Result<Option<String>, AttemptError> {
        let found: Found = s
            .send_json(
                Method::POST,
                &self.url(&format!("/crm/v3/objects/{kind}/search")),
                &json!({
                    "filterGroups": [{"filters": [{
                        "propertyName": property, "operator": "EQ", "value": value,
                    }]}],
                    "properties": [property],
                    "limit": 1,
                }),
                &[],
            )
            .await?
            .json()?;
        Ok(found.results.into_iter().next().map(|o| o.id))
    }

    pub(super) async fn update(
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
}
