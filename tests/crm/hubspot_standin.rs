//! A local HTTP server that behaves like the parts of HubSpot's CRM API the
//! CRM consumer uses, for end-to-end tests: property definitions, objects
//! (create, update, search), v4 associations and owners. It keeps everything
//! in memory, records every request, and can be told to misbehave: lose an
//! answer, answer an error, or rate-limit like HubSpot's ten-second window.
//!
//! Like `FakeCrm`, it is served by `http_stub`: HTTP/1.1 on 127.0.0.1, one request
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
//!   [`api::searchable_phone`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::http_stub;

mod api;
mod tests;

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
    /// Answer as usual: lets a request through to fault a later one of
    /// the same prefix (a search before a create).
    Pass,
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
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let port = http_stub::serve(move |request| {
            let state = shared.clone();
            async move { serve(request, &state) }
        })
        .await;
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

/// Records a request and answers it.
fn serve(request: http_stub::Incoming, state: &Mutex<State>) -> http_stub::Outgoing {
    let http_stub::Incoming {
        method,
        path,
        query,
        headers,
        body,
    } = request;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut state = state.lock().unwrap();
    let (status, answer, retry_after) = state.answer(&method, &path, &query, &body);
    state.requests.push(Request {
        method,
        path,
        query,
        body,
        status,
        headers,
        at: Instant::now(),
    });
    let retry_after = retry_after.map(|after| format!("retry-after: {after}\r\n"));
    (status, retry_after.unwrap_or_default(), answer.to_string())
}
