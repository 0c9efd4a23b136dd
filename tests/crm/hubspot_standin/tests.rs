//! The stand-in against its own spec, over HTTP.

use super::api::searchable_phone;
use super::*;

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
