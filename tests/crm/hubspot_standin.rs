//! A local HTTP server that behaves like the parts of HubSpot's CRM API the
//! CRM consumer uses, for end-to-end tests: property definitions, objects
//! (create, update, search), v4 associations and owners. It keeps everything
//! in memory, records every request, and can be told to misbehave: lose an
//! answer, answer an error, or rate-limit like HubSpot's ten-second window.
//!
//! Like `FakeCrm`, it is a minimal HTTP/1.1 server on 127.0.0.1: one request
//! per connection, answered with `connection: close`.
//!
//! Where it simplifies HubSpot:
//! * object ids come from one counter for all types (1001, 1002…);
//! * property names are not checked, except those defined with
//!   `hasUniqueValue`, whose values must be unique per object type;
//! * search knows `EQ` and `IN` only (other operators match nothing) and
//!   compares values as strings; an object is found only `search_lag` after
//!   its creation (HubSpot's index is eventually consistent), except contacts
//!   added by hand, which are found at once;
//! * contacts' `hs_searchable_calculated_phone_number` is approximated, see
//!   [`searchable_phone`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The stand-in server; its clones share the same state.
#[derive(Clone)]
pub struct HubSpotStandIn {
    port: u16,
    state: Arc<Mutex<State>>,
}

/// A CRM object as the stand-in holds it.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub id: String,
    pub object_type: String,
    pub properties: Map<String, Value>,
    /// (to object type, to object id, associationTypeId).
    pub associations: Vec<(String, String, u64)>,
}

/// One request as received, with the status it was answered.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Without the query string.
    pub path: String,
    pub query: String,
    /// `Null` without a JSON body.
    pub body: Value,
    pub status: u16,
    /// By lower-case name.
    pub headers: HashMap<String, String>,
    /// When it arrived.
    pub at: Instant,
}

/// A misbehaviour for one request (see [`HubSpotStandIn::fault_next`]).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Apply the request, then answer 502 instead of the real answer.
    LoseAnswer,
    /// Answer this status without applying the request.
    Status(u16),
    /// Answer 429 with this `Retry-After`, without applying the request.
    TooMany(&'static str),
}

#[derive(Default)]
struct State {
    last_id: u64,
    /// Lowest id first; `Instant` of creation, `None` for contacts added by hand.
    objects: Vec<(StoredObject, Option<Instant>, String)>,
    /// Definitions by (object type, name).
    properties: BTreeMap<(String, String), Value>,
    /// Property groups by (object type, name).
    groups: std::collections::BTreeSet<(String, String)>,
    /// (id, email).
    owners: Vec<(String, String)>,
    search_lag: Duration,
    /// (method, path prefix, faults still to give).
    faults: Vec<(String, String, VecDeque<Fault>)>,
    limit: Option<usize>,
    /// When the requests the limit let through arrived.
    window: VecDeque<Instant>,
    requests: Vec<Request>,
}

/// Status, JSON body, and `Retry-After` for a 429.
type Answer = (u16, Value, Option<&'static str>);
type Properties = Map<String, Value>;

const SEARCHABLE_PHONE: &str = "hs_searchable_calculated_phone_number";

impl HubSpotStandIn {
    /// Starts listening on a free port of 127.0.0.1.
    pub async fn start() -> HubSpotStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        HubSpotStandIn { port, state }
    }

    /// The API base, `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Adds a contact with these properties (a JSON object), searchable at
    /// once; returns its id.
    pub fn add_contact(&self, properties: Value) -> String {
        let properties = properties.as_object().cloned().unwrap_or_default();
        self.state().insert("contacts", properties, None)
    }

    /// Adds an owner (a HubSpot user) with this e-mail; returns its id.
    pub fn add_owner(&self, email: &str) -> String {
        let mut state = self.state();
        let id = state.new_id();
        state.owners.push((id.clone(), email.to_string()));
        id
    }

    /// Defines a property, as if it had been set up by hand.
    pub fn add_property(&self, object_type: &str, name: &str, unique: bool) {
        let definition = json!({"name": name, "label": name, "type": "string",
            "fieldType": "text", "groupName": "callstream", "hasUniqueValue": unique});
        let key = (object_type.to_string(), name.to_string());
        self.state().properties.insert(key, definition);
    }

    /// Objects are found by search only `lag` after their creation.
    pub fn set_search_lag(&self, lag: Duration) {
        self.state().search_lag = lag;
    }

    /// The next requests with this method and a path starting with
    /// `path_prefix` get these faults, in order, one each. A fault comes
    /// before the rate limit; only an applied request (`LoseAnswer`) counts
    /// towards it.
    pub fn fault_next(&self, method: &str, path_prefix: &str, faults: Vec<Fault>) {
        let method = method.to_ascii_uppercase();
        let faults = (method, path_prefix.to_string(), faults.into());
        self.state().faults.push(faults);
    }

    /// HubSpot's rolling ten-second window: once `n` requests were let
    /// through in the last 10 s, the next get 429 with `Retry-After: 1`
    /// (not applied, not counted).
    pub fn limit_per_ten_seconds(&self, n: usize) {
        self.state().limit = Some(n);
    }

    /// The objects of this type (`calls`, `communications`, `contacts`…),
    /// lowest id first.
    pub fn objects(&self, object_type: &str) -> Vec<StoredObject> {
        let state = self.state();
        let objects = state.objects.iter().map(|(object, ..)| object);
        let of_type = objects.filter(|o| o.object_type == object_type);
        of_type.cloned().collect()
    }

    /// Every request received, in order, with the status answered.
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }
}

/// Reads one request, records and answers it, closes the connection.
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    if stream.read_line(&mut line).await.is_err() {
        return;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_ascii_uppercase();
    let target = words.next().unwrap_or_default();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = HashMap::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length = headers.get("content-length").and_then(|v| v.parse().ok());
    let mut body = vec![0; length.unwrap_or(0)];
    if stream.read_exact(&mut body).await.is_err() {
        return;
    }
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, answer, retry_after) = {
        let mut state = state.lock().unwrap();
        let answer = state.answer(&method, &path, &query, &body);
        let (status, headers) = (answer.0, headers);
        let request = Request {
            method,
            path,
            query,
            body,
            status,
            headers,
            at: Instant::now(),
        };
        state.requests.push(request);
        answer
    };
    let retry_after = retry_after.map(|after| format!("retry-after: {after}\r\n"));
    let answer = answer.to_string();
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{}\r\n{answer}",
        answer.len(),
        retry_after.unwrap_or_default(),
    );
    let _ = stream.get_mut().write_all(response.as_bytes()).await;
    let _ = stream.get_mut().shutdown().await;
}

impl State {
    fn new_id(&mut self) -> String {
        self.last_id += 1;
        (1000 + self.last_id).to_string()
    }

    /// Stores a new object without associations; returns its id.
    fn insert(&mut self, object_type: &str, properties: Properties, at: Option<Instant>) -> String {
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
    fn answer(&mut self, method: &str, path: &str, query: &str, body: &Value) -> Answer {
        let faults = self.faults.iter_mut().find(|(m, prefix, faults)| {
            m == method && path.starts_with(prefix.as_str()) && !faults.is_empty()
        });
        let fault = faults.and_then(|(.., faults)| faults.pop_front());
        match fault {
            Some(Fault::Status(status)) => return error(status, "INJECTED", "Injected fault"),
            Some(Fault::TooMany(after)) => return too_many(after),
            Some(Fault::LoseAnswer) | None => {}
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
fn searchable_phone(number: &str) -> String {
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

// ---- tests ------------------------------------------------------------------

/// Sends `body` (none if `Null`); returns the status and the JSON answer.
async fn send(hubspot: &HubSpotStandIn, method: &str, path: &str, body: Value) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let url = format!("{}{path}", hubspot.url());
    let client = reqwest::Client::new();
    let mut request = client.request(method, url).bearer_auth("pat-test");
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

const CALLS: &str = "/crm/v3/objects/calls";

fn call(key: &str) -> Value {
    json!({"properties": {"hs_call_title": "Call", "callstream_call_key": key}})
}

fn search_eq(property: &str, value: &str) -> Value {
    let filter = json!({"propertyName": property, "operator": "EQ", "value": value});
    json!({"filterGroups": [{"filters": [filter]}], "limit": 5})
}

#[tokio::test]
async fn a_unique_value_is_taken_only_once() {
    let hubspot = HubSpotStandIn::start().await;
    hubspot.add_property("calls", "callstream_call_key", true);
    let key = "/crm/v3/properties/calls/callstream_call_key";
    let (status, property) = send(&hubspot, "GET", key, Value::Null).await;
    assert_eq!((status, &property["hasUniqueValue"]), (200, &json!(true)));
    let missing = "/crm/v3/properties/calls/missing";
    assert_eq!(send(&hubspot, "GET", missing, Value::Null).await.0, 404);
    let definition = json!({"name": "callstream_call_key", "hasUniqueValue": true});
    let path = "/crm/v3/properties/calls";
    let (status, answer) = send(&hubspot, "POST", path, definition).await;
    assert_eq!((status, &answer["category"]), (409, &json!("CONFLICT")));

    let (status, created) = send(&hubspot, "POST", CALLS, call("k-1")).await;
    assert_eq!((status, &created["id"]), (201, &json!("1001")));
    let (status, answer) = send(&hubspot, "POST", CALLS, call("k-1")).await;
    let taken = "A calls object with the value \"k-1\" for property callstream_call_key";
    assert_eq!((status, &answer["category"]), (409, &json!("CONFLICT")));
    assert_eq!(answer["message"], format!("{taken} already exists"));

    let (_, other) = send(&hubspot, "POST", CALLS, call("k-2")).await;
    let path = format!("{CALLS}/{}", other["id"].as_str().unwrap());
    let (status, _) = send(&hubspot, "PATCH", &path, call("k-1")).await;
    assert_eq!(status, 409, "an update is checked against the others");
    let clear = json!({"properties": {"hs_call_title": "", "hs_call_body": "notes"}});
    let (status, updated) = send(&hubspot, "PATCH", &path, clear).await;
    let merged = json!({"callstream_call_key": "k-2", "hs_call_body": "notes"});
    assert_eq!((status, &updated["properties"]), (200, &merged));
    let unknown = format!("{CALLS}/999");
    assert_eq!(send(&hubspot, "PATCH", &unknown, call("k-3")).await.0, 404);

    let calls = hubspot.objects("calls");
    let key_of =
        |c: &StoredObject| format!("{} {}", c.object_type, c.properties["callstream_call_key"]);
    let keys: Vec<String> = calls.iter().map(key_of).collect();
    assert_eq!(keys, [r#"calls "k-1""#, r#"calls "k-2""#]);
    let statuses: Vec<u16> = hubspot.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 409, 201, 409, 201, 409, 200, 404]);
}

#[tokio::test]
async fn search_lags_behind_creation() {
    let hubspot = HubSpotStandIn::start().await;
    hubspot.set_search_lag(Duration::from_millis(300));
    let created = Instant::now();
    assert_eq!(send(&hubspot, "POST", CALLS, call("k-1")).await.0, 201);
    let path = "/crm/v3/objects/calls/search";
    let search = search_eq("callstream_call_key", "k-1");
    let (status, found) = send(&hubspot, "POST", path, search.clone()).await;
    assert_eq!((status, &found["total"]), (200, &json!(0)), "not yet");

    let mut found = Value::Null;
    while created.elapsed() < Duration::from_secs(3) && found["total"] != 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = send(&hubspot, "POST", path, search.clone()).await.1;
    }
    assert_eq!(found["total"], 1, "found once the lag passed");
    assert!(created.elapsed() >= Duration::from_millis(300));
    let properties = &found["results"][0]["properties"];
    assert_eq!(properties["callstream_call_key"], "k-1");
    let last = hubspot.requests().pop().unwrap();
    assert_eq!((&*last.method, &*last.path), ("POST", path));
    assert_eq!(last.body, search);
    assert_eq!(last.headers["authorization"], "Bearer pat-test");
}

#[tokio::test]
async fn contacts_are_found_by_their_computed_phone_number() {
    assert_eq!(searchable_phone("+33 9 87 65 43 21"), "987654321");
    assert_eq!(searchable_phone("09 87 65 43 21"), "987654321");
    assert_eq!(searchable_phone("0033 987654321"), "987654321");
    assert_eq!(searchable_phone("+1 (415) 555-2671"), "4155552671");
    let hubspot = HubSpotStandIn::start().await;
    hubspot.set_search_lag(Duration::from_secs(60));
    let french = json!({"phone": "+33 9 87 65 43 21", "associatedcompanyid": "77"});
    let french = hubspot.add_contact(french);
    let both = json!({"phone": "(415) 555-2671", "mobilephone": "+44 20 7946 0958"});
    let both = hubspot.add_contact(both);
    let found = |body: Value| {
        let hubspot = hubspot.clone();
        async move {
            let path = "/crm/v3/objects/contacts/search";
            let (status, answer) = send(&hubspot, "POST", path, body).await;
            assert_eq!(status, 200);
            let results = answer["results"].as_array().unwrap().iter();
            let ids = results.map(|r| r["id"].as_str().unwrap().to_string());
            ids.collect::<Vec<_>>()
        }
    };
    let by_phone = |number| search_eq(SEARCHABLE_PHONE, number);
    assert_eq!(found(by_phone("987654321")).await, [french.as_str()]);
    assert_eq!(found(by_phone("2079460958")).await, [both.as_str()]);
    assert!(found(by_phone("0987654321")).await.is_empty());
    let phone_in =
        json!({"propertyName": SEARCHABLE_PHONE, "operator": "IN", "values": ["4155552671"]});
    let company = json!({"propertyName": "associatedcompanyid", "operator": "EQ", "value": "77"});
    let either = json!({"filterGroups": [{"filters": [phone_in]}, {"filters": [company]}]});
    assert_eq!(found(either).await, [french, both]);
}

#[tokio::test]
async fn a_lost_answer_still_stores_the_object() {
    let hubspot = HubSpotStandIn::start().await;
    let contact = hubspot.add_contact(json!({"phone": "0987654321"}));
    let faults = vec![Fault::LoseAnswer, Fault::Status(500)];
    hubspot.fault_next("POST", CALLS, faults);
    let types = json!([{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}]);
    let mut body = call("k-1");
    body["associations"] = json!([{"to": {"id": contact}, "types": types}]);
    let (status, answer) = send(&hubspot, "POST", CALLS, body.clone()).await;
    assert_eq!((status, &answer["message"]), (502, &json!("Bad Gateway")));
    assert_eq!(send(&hubspot, "POST", CALLS, body.clone()).await.0, 500);
    assert_eq!(send(&hubspot, "POST", CALLS, body).await.0, 201);

    let calls = hubspot.objects("calls");
    assert_eq!(calls.len(), 2, "the 502's call is stored, the 500's not");
    let expected = vec![("contacts".to_string(), contact.clone(), 194)];
    assert_eq!(calls[0].associations, expected);
    let to_contact = format!("associations/contacts/{contact}");
    let path = format!("/crm/v4/objects/calls/{}/{to_contact}", calls[0].id);
    assert_eq!(send(&hubspot, "PUT", &path, types.clone()).await.0, 200);
    let associations = hubspot.objects("calls")[0].associations.clone();
    assert_eq!(associations, expected, "no duplicate");
    let unknown = format!("/crm/v4/objects/calls/999/{to_contact}");
    assert_eq!(send(&hubspot, "PUT", &unknown, types).await.0, 404);
}

#[tokio::test]
async fn past_the_limit_requests_get_429_with_retry_after() {
    let hubspot = HubSpotStandIn::start().await;
    let owner = hubspot.add_owner("Jane.Doe+sales@example.com");
    hubspot.add_owner("john@example.com");
    hubspot.limit_per_ten_seconds(3);
    hubspot.fault_next("GET", "/crm/v3/owners", vec![Fault::TooMany("7")]);
    let query = "email=jane.doe%2Bsales%40example.com&limit=10";
    let url = format!("{}/crm/v3/owners?{query}", hubspot.url());
    let (mut statuses, mut bodies) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let response = reqwest::get(&url).await.unwrap();
        let retry_after = response.headers().get("retry-after");
        let retry_after = retry_after.map(|v| v.to_str().unwrap().to_string());
        statuses.push((response.status().as_u16(), retry_after));
        bodies.push(response.json::<Value>().await.unwrap());
    }
    let retry = |after: &str| Some(after.to_string());
    let ok = (200, None);
    let expected = [
        (429, retry("7")),
        ok.clone(),
        ok.clone(),
        ok,
        (429, retry("1")),
    ];
    assert_eq!(statuses, expected);
    let jane = json!({"id": owner, "email": "Jane.Doe+sales@example.com",
        "firstName": "", "lastName": ""});
    assert_eq!(bodies[1]["results"], json!([jane]));
    assert_eq!(bodies[4]["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(hubspot.requests()[1].query, query);
}
