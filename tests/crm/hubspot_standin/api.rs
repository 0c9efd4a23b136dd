//! What the stand-in does with a request: faults and the ten-second
//! limit, then HubSpot's routes (properties, objects, search, v4
//! associations, owners), and its answers.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Answer, Fault, Properties, State, StoredObject, SEARCHABLE_PHONE};

impl State {
    pub(super) fn new_id(&mut self) -> String {
        self.last_id += 1;
        (1000 + self.last_id).to_string()
    }

    /// Stores a new object without associations; returns its id.
    pub(super) fn insert(
        &mut self,
        object_type: &str,
        properties: Properties,
        at: Option<Instant>,
    ) -> String {
        let (id, object_type) = (self.new_id(), object_type.to_string());
        let associations = Vec::new();
        let object = StoredObject {
            id: id.clone(),
            object_type,
            properties,
            associations,
        };
        let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.objects.push((object, at, stamp));
        id
    }

    /// Faults, then the rate limit, then the endpoint.
    pub(super) fn answer(&mut self, method: &str, path: &str, query: &str, body: &Value) -> Answer {
        let faults = self.faults.iter_mut().find(|(m, prefix, faults)| {
            m == method && path.starts_with(prefix.as_str()) && !faults.is_empty()
        });
        let fault = faults.and_then(|(.., faults)| faults.pop_front());
        match fault {
            Some(Fault::Status(status)) => return error(status, "INJECTED", "Injected fault"),
            Some(Fault::TooMany(after)) => return too_many(after),
            Some(Fault::LoseAnswer | Fault::Pass) | None => {}
        }
        if let Some(limit) = self.limit {
            let now = Instant::now();
            let past = |t: &Instant| now - *t >= Duration::from_secs(10);
            while self.window.front().is_some_and(past) {
                self.window.pop_front();
            }
            if self.window.len() >= limit {
                return too_many("1");
            }
            self.window.push_back(now);
        }
        let answer = self.route(method, path, query, body);
        match fault {
            Some(Fault::LoseAnswer) => {
                let lost = json!({"status": "error", "message": "Bad Gateway"});
                (502, lost, None)
            }
            _ => answer,
        }
    }

    fn route(&mut self, method: &str, path: &str, query: &str, body: &Value) -> Answer {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let properties = body["properties"].as_object().cloned().unwrap_or_default();
        let key = |t: &str, name: &str| (t.to_string(), name.to_string());
        match (method, &parts[..]) {
            ("GET", ["crm", "v3", "properties", t, name]) => {
                match self.properties.get(&key(t, name)) {
                    Some(definition) => (200, definition.clone(), None),
                    None => not_found(format!("No property {name}")),
                }
            }
            ("POST", ["crm", "v3", "properties", t, "groups"]) => {
                let name = body["name"].as_str().unwrap_or_default();
                if !self.groups.insert(key(t, name)) {
                    return error(409, "CONFLICT", format!("Group {name} already exists"));
                }
                (201, body.clone(), None)
            }
            ("POST", ["crm", "v3", "properties", t]) => {
                let name = body["name"].as_str().unwrap_or_default();
                if self.properties.contains_key(&key(t, name)) {
                    return error(409, "CONFLICT", format!("Property {name} already exists"));
                }
                let mut definition = body.clone();
                definition["hasUniqueValue"] = json!(body["hasUniqueValue"] == true);
                self.properties.insert(key(t, name), definition.clone());
                (201, definition, None)
            }
            ("POST", ["crm", "v3", "objects", t, "search"]) => self.search(t, body),
            ("POST", ["crm", "v3", "objects", t]) => self.create(t, properties, body),
            ("PATCH", ["crm", "v3", "objects", t, id]) => self.update(t, id, properties),
            ("PUT", ["crm", "v4", "objects", t, id, "associations", to_type, to_id]) => {
                let Some(index) = self.find(t, id) else {
                    return not_found(format!("No {t} {id}"));
                };
                let associations = &mut self.objects[index].0.associations;
                for kind in body.as_array().into_iter().flatten() {
                    let type_id = kind["associationTypeId"].as_u64().unwrap_or(0);
                    let association = (to_type.to_string(), to_id.to_string(), type_id);
                    if !associations.contains(&association) {
                        associations.push(association);
                    }
                }
                let answer = json!({"fromObjectId": id, "toObjectId": to_id, "labels": []});
                (200, answer, None)
            }
            ("GET", ["crm", "v3", "owners"]) => self.owners(query),
            _ => not_found(format!("No route for {method} {path}")),
        }
    }

    /// Associations name no object type: it follows from the type id
    /// (calls' 194 and communications' 81 to contacts…) or the object.
    fn create(&mut self, object_type: &str, properties: Properties, body: &Value) -> Answer {
        if let Some(conflict) = self.conflict(object_type, &properties, "") {
            return conflict;
        }
        let mut associations = Vec::new();
        for association in body["associations"].as_array().into_iter().flatten() {
            let to_id = text(&association["to"]["id"]).unwrap_or_default();
            let to = self.objects.iter().find(|(o, ..)| o.id == to_id);
            for kind in association["types"].as_array().into_iter().flatten() {
                let type_id = kind["associationTypeId"].as_u64().unwrap_or(0);
                let to_type = match (type_id, to) {
                    (194 | 81, _) => "contacts",
                    (182 | 87, _) => "companies",
                    (_, Some((object, ..))) => &object.object_type,
                    _ => "unknown",
                };
                associations.push((to_type.to_string(), to_id.clone(), type_id));
            }
        }
        self.insert(object_type, properties, Some(Instant::now()));
        let index = self.objects.len() - 1;
        self.objects[index].0.associations = associations;
        (201, self.to_json(index), None)
    }

    /// Replaces properties key by key; "" (or null) clears one.
    fn update(&mut self, object_type: &str, id: &str, properties: Properties) -> Answer {
        let Some(index) = self.find(object_type, id) else {
            return not_found(format!("No {object_type} {id}"));
        };
        let mut merged = self.objects[index].0.properties.clone();
        for (name, value) in properties {
            match text(&value) {
                Some(_) => merged.insert(name, value),
                None => merged.remove(&name),
            };
        }
        if let Some(conflict) = self.conflict(object_type, &merged, id) {
            return conflict;
        }
        self.objects[index].0.properties = merged;
        (200, self.to_json(index), None)
    }

    /// Filter groups are ORed, the filters of a group ANDed.
    fn search(&self, object_type: &str, body: &Value) -> Answer {
        let groups = body["filterGroups"].as_array().cloned().unwrap_or_default();
        let matches = |object: &StoredObject| {
            let all_match = |group: &Value| {
                let mut filters = group["filters"].as_array().into_iter().flatten();
                filters.all(|filter| filter_matches(object, filter))
            };
            groups.is_empty() || groups.iter().any(all_match)
        };
        let indexed =
            |created: &Option<Instant>| !created.is_some_and(|at| at.elapsed() < self.search_lag);
        let found: Vec<usize> = (0..self.objects.len())
            .filter(|&i| self.objects[i].0.object_type == object_type)
            .filter(|&i| indexed(&self.objects[i].1) && matches(&self.objects[i].0))
            .collect();
        let limit = body["limit"].as_u64().unwrap_or(10) as usize;
        let results: Vec<Value> = found.iter().take(limit).map(|&i| self.to_json(i)).collect();
        (200, json!({"total": found.len(), "results": results}), None)
    }

    /// Owners, filtered by the `email` parameter (case-insensitively) if any.
    fn owners(&self, query: &str) -> Answer {
        let (mut email, mut limit) = (None, 100);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "email" => email = Some(value.to_lowercase()),
                "limit" => limit = value.parse().unwrap_or(limit),
                _ => {}
            }
        }
        let results: Vec<Value> = (self.owners.iter())
            .filter(|(_, e)| email.is_none() || email == Some(e.to_lowercase()))
            .take(limit)
            .map(|(id, e)| json!({"id": id, "email": e, "firstName": "", "lastName": ""}))
            .collect();
        (200, json!({"results": results}), None)
    }

    /// The index of object `id` if it is of this type.
    fn find(&self, object_type: &str, id: &str) -> Option<usize> {
        let mut objects = self.objects.iter();
        objects.position(|(o, ..)| o.id == id && o.object_type == object_type)
    }

    /// A 409 if an object of this type other than `except` holds one of
    /// `properties`' values for a property defined with `hasUniqueValue`.
    fn conflict(&self, object_type: &str, properties: &Properties, except: &str) -> Option<Answer> {
        for ((of_type, name), definition) in &self.properties {
            let value = properties.get(name).and_then(text);
            if of_type != object_type || definition["hasUniqueValue"] != true || value.is_none() {
                continue;
            }
            let others = self.objects.iter().map(|(o, ..)| o);
            let mut others = others.filter(|o| o.object_type == object_type && o.id != except);
            if others.any(|o| o.properties.get(name).and_then(text) == value) {
                let value = value.unwrap_or_default();
                let message = format!(
                    "A {object_type} object with the value \"{value}\" for property {name} already exists"
                );
                return Some(error(409, "CONFLICT", message));
            }
        }
        None
    }

    fn to_json(&self, index: usize) -> Value {
        let (object, _, at) = &self.objects[index];
        json!({"id": object.id, "properties": object.properties,
            "createdAt": at, "updatedAt": at, "archived": false})
    }
}

/// Whether an object passes one search filter.
fn filter_matches(object: &StoredObject, filter: &Value) -> bool {
    let name = filter["propertyName"].as_str().unwrap_or_default();
    let values: Vec<String> = if object.object_type == "contacts" && name == SEARCHABLE_PHONE {
        let numbers = ["phone", "mobilephone"].map(|p| object.properties.get(p).and_then(text));
        numbers
            .iter()
            .flatten()
            .map(|n| searchable_phone(n))
            .collect()
    } else {
        let value = object.properties.get(name).and_then(text);
        value.into_iter().collect()
    };
    let wanted: Vec<String> = match filter["operator"].as_str() {
        Some("EQ") => text(&filter["value"]).into_iter().collect(),
        Some("IN") => {
            let values = filter["values"].as_array().into_iter().flatten();
            values.filter_map(text).collect()
        }
        _ => Vec::new(),
    };
    values.iter().any(|v| wanted.contains(v))
}

/// How the stand-in approximates HubSpot's computed
/// `hs_searchable_calculated_phone_number`: digits only, then an
/// international number (`+` or `00`) loses its country calling code (1,
/// 33, 44 or 49, tried in that order), a national one its leading `0`.
/// `+33 9 87 65 43 21` and `09 87 65 43 21` both give `987654321`.
pub(super) fn searchable_phone(number: &str) -> String {
    let number = number.trim();
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let international = match number.starts_with('+') {
        true => Some(digits.as_str()),
        false => digits.strip_prefix("00"),
    };
    let codes = ["1", "33", "44", "49"];
    let national = match international {
        Some(digits) => codes
            .iter()
            .find_map(|c| digits.strip_prefix(c))
            .unwrap_or(digits),
        None => digits.strip_prefix('0').unwrap_or(&digits),
    };
    national.to_string()
}

/// A value as the string HubSpot compares; `None` when null or "".
fn text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn not_found(message: impl Into<Value>) -> Answer {
    error(404, "OBJECT_NOT_FOUND", message)
}

fn error(status: u16, category: &str, message: impl Into<Value>) -> Answer {
    let body = json!({"status": "error", "message": message.into(), "category": category});
    (status, body, None)
}

fn too_many(retry_after: &'static str) -> Answer {
    let message = "You have reached your ten_secondly_rolling limit.";
    let body = json!({"status": "error", "message": message, "errorType": "RATE_LIMIT",
        "policyName": "TEN_SECONDLY_ROLLING"});
    (429, body, Some(retry_after))
}
