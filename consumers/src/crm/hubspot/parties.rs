//! Who a call is with and who took it: the contact of the external
//! number (found, or created with `create_contacts`) and the owner of the
//! agent's e-mail.

use std::collections::BTreeMap;
use std::time::Instant;

use reqwest::{Method, StatusCode, Url};
use serde_json::json;

use callstream_schemas::Party;

use super::{Created, Found, HubSpot, Properties, CONTACT_KEY, CONTACT_KEY_PROPERTY};
use crate::crm::state::ContactRow;
use crate::crm::{AttemptError, Session};

impl HubSpot {
    /// The owner id of the internal party's e-mail, if HubSpot has one.
    pub(super) async fn owner(
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
    pub(super) async fn contact(
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
        if self.create_contacts {
            // Before the search, which may name it: a contact this target
            // created is found by it even where HubSpot rewrote `phone`.
            self.ensure_unique(s, "contacts", &CONTACT_KEY).await?;
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
        if self.create_contacts {
            groups.push(json!({"filters": [{
                "propertyName": CONTACT_KEY_PROPERTY,
                "operator": "EQ",
                "value": number,
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
                let mut properties = BTreeMap::from([
                    ("phone", number.to_string()),
                    (CONTACT_KEY_PROPERTY, number.to_string()),
                ]);
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
                let answer = s
                    .send_json(
                        Method::POST,
                        &self.url("/crm/v3/objects/contacts"),
                        &Properties {
                            properties: &properties,
                        },
                        &[StatusCode::CONFLICT],
                    )
                    .await?;
                let contact_id = if answer.status == StatusCode::CONFLICT {
                    // An earlier create's answer was lost after HubSpot
                    // stored it, and its search did not find it yet.
                    self.find_by(s, "contacts", CONTACT_KEY_PROPERTY, number)
                        .await?
                        .ok_or_else(|| {
                            AttemptError::NotYet(format!(
                                "HubSpot holds a contact with {CONTACT_KEY_PROPERTY} {number} \
                                 (409) that its search does not find yet"
                            ))
                        })?
                } else {
                    answer.json::<Created>()?.id
                };
                ContactRow {
                    contact_id,
                    company_id: None,
                }
            }
            // Not remembered: the contact may be added in HubSpot later.
            None => return Ok(None),
        };
        self.db.set_contact(&self.target, number, &row).await?;
        Ok(Some(row))
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
}
