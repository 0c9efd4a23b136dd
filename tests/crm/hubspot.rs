//! HubSpot, as a sales team sees it: one engagement per call, updated in
//! place, on the right contact and owner, whatever is lost or replayed on
//! the way. Against `hubspot_standin`, a local server that behaves like
//! HubSpot's v3 API (its search lags its writes, its unique properties
//! refuse a second object, its answers can be lost).

use super::hubspot_standin::{Fault, HubSpotStandIn, StoredObject};
use super::*;
use callstream_testkit::postgres::TestDatabase;

const AGENT: &str = "agent@acme.example";

/// Settings with `targets` and the state database.
fn hubspot_settings(bootstrap: &str, db: &TestDatabase, targets: Value) -> Settings {
    let base = Settings::defaults().merge(("database_url", db.url.as_str()));
    settings_with(bootstrap, targets, base)
}

/// A target on `hub` with quick retries; `extra` on top.
fn target(hub: &HubSpotStandIn, extra: Value) -> Value {
    let mut target = json!({
        "kind": "hubspot",
        "url": hub.url(),
        "bearer_token": "pat-test",
        "default_region": "FR",
        "rate_per_second": 200,
        "initial_backoff_ms": 100,
        "max_backoff_ms": 1500,
        "max_attempts": 20,
    });
    target
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    target
}

/// An answered inbound Onoff call from `number`, taken by `agent`.
fn answered(call_id: &str, number: &str, agent: &str) -> Value {
    let mut e = call_event(call_id, "call", "answered");
    e["external"] = json!({"name": "Jane Client", "number": number});
    e["internal"] = json!({"name": "Ann Agent", "number": "+33100000000", "email": agent});
    e
}

fn property<'a>(object: &'a StoredObject, name: &str) -> &'a str {
    object
        .properties
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The one call engagement of `key`; fails on none or several.
fn only_call(hub: &HubSpotStandIn, key: &str) -> StoredObject {
    let calls: Vec<StoredObject> = hub
        .objects("calls")
        .into_iter()
        .filter(|o| property(o, "callstream_call_key") == key)
        .collect();
    assert_eq!(calls.len(), 1, "engagements of {key}: {calls:#?}");
    calls.into_iter().next().unwrap()
}

fn creates(hub: &HubSpotStandIn, object: &str) -> usize {
    let path = format!("/crm/v3/objects/{object}");
    hub.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .count()
}

/// The case: an existing contact (its number written otherwise),
/// an agent with an owner, the first create's answer lost after HubSpot
/// stored it, while its search lags; then the notes as an update; then a
/// replay of everything under a new group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_engagement_per_call_through_a_lost_answer_an_update_and_a_replay() {
    let kafka = Kafka::start();
    let db = TestDatabase::create().await;
    let hub = HubSpotStandIn::start().await;
    let contact = hub.add_contact(json!({
        "phone": "+33 9 87 65 43 21",
        "firstname": "Jane",
        "associatedcompanyid": "77",
    }));
    let owner = hub.add_owner(AGENT);
    hub.set_search_lag(Duration::from_millis(1500));
    hub.fault_next("POST", "/crm/v3/objects/calls", vec![Fault::LoseAnswer]);
    let with_companies = || json!({"hub": target(&hub, json!({"associate_companies": true}))});
    let settings = hubspot_settings(&kafka.bootstrap(), &db, with_companies());

    let call = answered("c-1", "09 87 65 43 21", AGENT);
    let key = "onoff:acme:c-1";
    // The event on the unique topic too, as dedup forwards it: the target
    // takes it as its call.
    kafka.publish(&[(&call, 1)]).await;
    kafka.publish_call(&[&call], 1).await;
    let crm = start(&settings).await;
    if !eventually(DEADLINE, || crm.events("hub", "delivered") == 1.0).await {
        for r in hub.requests() {
            eprintln!(
                "{} {}?{} {} -> {}",
                r.method, r.path, r.query, r.body, r.status
            );
        }
        panic!("timed out waiting: the call logged");
    }
    let first = only_call(&hub, key);
    assert!(
        creates(&hub, "calls") >= 2,
        "the lost answer was followed by a second create, refused as a duplicate"
    );

    let mut notes = call.clone();
    notes["notes"] = json!("Wants a quote by Friday");
    notes["received_at"] = json!("2023-05-20T15:00:00Z");
    kafka.publish(&[(&notes, 2)]).await;
    kafka.publish_call(&[&notes], 2).await;
    wait("the update applied", || {
        crm.events("hub", "delivered") == 2.0
    })
    .await;
    crm.stop().await;

    let engagement = only_call(&hub, key);
    assert_eq!(engagement.id, first.id, "updated in place");
    assert_eq!(
        property(&engagement, "hs_call_body"),
        "Wants a quote by Friday"
    );
    assert_eq!(property(&engagement, "hubspot_owner_id"), owner);
    assert_eq!(property(&engagement, "hs_call_status"), "COMPLETED");
    assert_eq!(property(&engagement, "hs_call_direction"), "INBOUND");
    assert_eq!(
        property(&engagement, "hs_call_title"),
        "Inbound call from Jane Client (09 87 65 43 21)"
    );
    assert_eq!(
        engagement.associations,
        [
            ("contacts".to_string(), contact.clone(), 194),
            ("companies".to_string(), "77".to_string(), 182)
        ],
        "on the contact's and its company's timelines"
    );
    assert_eq!(hub.objects("contacts").len(), 1, "no contact created");
    let patches = hub
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path == format!("/crm/v3/objects/calls/{}", first.id))
        .count();
    assert!(patches >= 1, "the update is a PATCH");

    // A replay of both topics (the unique events and the calls) under new
    // groups finds every state delivered already: nothing is created,
    // nothing is sent.
    let before = hub.requests().len();
    let replay = hubspot_settings(&kafka.bootstrap(), &db, with_companies());
    let crm = start(&replay).await;
    wait("both states and both events read again", || {
        crm.events("hub", "delivered") == 2.0 && crm.events("hub", "skipped") == 2.0
    })
    .await;
    crm.stop().await;
    assert_eq!(hub.requests().len(), before, "a replay sends nothing");
    assert_eq!(only_call(&hub, key).id, first.id);
    assert_eq!(kafka.dead_letter_count(), 0);
}

/// A number no contact has: created with `create_contacts`, left alone
/// without; an agent with no owner leaves the owner empty. Two targets,
/// one state database. The contact's create is answered 502 after HubSpot
/// stored it, while its search lags: the next create is refused by the
/// unique `callstream_phone`, and there is still one contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_contact_is_created_only_when_asked_and_a_missing_owner_stays_empty() {
    let kafka = Kafka::start();
    let db = TestDatabase::create().await;
    let (creating, plain) = (HubSpotStandIn::start().await, HubSpotStandIn::start().await);
    creating.add_owner("someone.else@acme.example");
    creating.set_search_lag(Duration::from_millis(1500));
    // The first POST under the prefix is the contact search, the second
    // the create.
    creating.fault_next(
        "POST",
        "/crm/v3/objects/contacts",
        vec![Fault::Pass, Fault::LoseAnswer],
    );
    let settings = hubspot_settings(
        &kafka.bootstrap(),
        &db,
        json!({
            "creating": target(&creating, json!({"create_contacts": true})),
            "plain": target(&plain, json!({})),
        }),
    );
    // Two calls from the same new number: one contact, not two.
    let first = answered("c-7", "+33 6 12 34 56 78", "nobody@acme.example");
    let mut second = answered("c-8", "06 12 34 56 78", "nobody@acme.example");
    second["identity"] = json!("onoff:acme:call:c-8");
    kafka.publish_call(&[&first], 1).await;
    kafka.publish_call(&[&second], 1).await;
    let crm = start(&settings).await;
    wait("both calls at both targets", || {
        crm.events("creating", "delivered") == 2.0 && crm.events("plain", "delivered") == 2.0
    })
    .await;
    crm.stop().await;

    let contacts = creating.objects("contacts");
    assert_eq!(contacts.len(), 1, "{contacts:#?}");
    assert!(
        creates(&creating, "contacts") >= 2,
        "the lost answer was followed by a second create, refused as a duplicate"
    );
    assert_eq!(property(&contacts[0], "phone"), "+33612345678");
    assert_eq!(property(&contacts[0], "callstream_phone"), "+33612345678");
    assert_eq!(property(&contacts[0], "firstname"), "Jane");
    assert_eq!(property(&contacts[0], "lastname"), "Client");
    for key in ["onoff:acme:c-7", "onoff:acme:c-8"] {
        let call = only_call(&creating, key);
        assert_eq!(
            call.associations,
            [("contacts".to_string(), contacts[0].id.clone(), 194)]
        );
        assert_eq!(property(&call, "hubspot_owner_id"), "", "no such owner");
        let call = only_call(&plain, key);
        assert!(call.associations.is_empty(), "{call:#?}");
    }
    assert!(
        plain.objects("contacts").is_empty(),
        "create_contacts is off"
    );
}

/// A burst of 429s on every kind of request: waited out per
/// `Retry-After`, and each call still ends as one engagement. An SMS is
/// one communication the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_burst_is_waited_out_and_leaves_one_engagement_per_call() {
    let kafka = Kafka::start();
    let db = TestDatabase::create().await;
    let hub = HubSpotStandIn::start().await;
    hub.add_contact(json!({"mobilephone": "+33612345678"}));
    hub.add_owner(AGENT);
    let burst = || vec![Fault::TooMany("1"), Fault::TooMany("1")];
    hub.fault_next("POST", "/crm/v3/objects/contacts/search", burst());
    hub.fault_next("POST", "/crm/v3/objects/calls", burst());
    hub.fault_next("PATCH", "/crm/v3/objects/calls/", burst());
    let settings = hubspot_settings(
        &kafka.bootstrap(),
        &db,
        json!({"hub": target(&hub, json!({}))}),
    );
    let calls: Vec<Value> = (0..3)
        .map(|i| {
            let mut c = answered(&format!("b-{i}"), "0612345678", AGENT);
            c["identity"] = json!(format!("onoff:acme:call:b-{i}"));
            c
        })
        .collect();
    for c in &calls {
        kafka.publish_call(&[c], 1).await;
    }
    let mut notes = calls[0].clone();
    notes["notes"] = json!("Called back");
    kafka.publish(&[(&notes, 2)]).await;
    kafka.publish_call(&[&notes], 2).await;
    let mut sms = event("sms", "outbound", "completed");
    sms["sms_body"] = json!("See you at 5");
    kafka.publish(&[(&sms, 1)]).await;

    let crm = start(&settings).await;
    wait("every call state and the SMS", || {
        crm.events("hub", "delivered") == 5.0
    })
    .await;
    crm.stop().await;

    for i in 0..3 {
        let call = only_call(&hub, &format!("onoff:acme:b-{i}"));
        assert_eq!(call.associations.len(), 1, "{call:#?}");
    }
    assert_eq!(
        property(&only_call(&hub, "onoff:acme:b-0"), "hs_call_body"),
        "Called back"
    );
    let communications = hub.objects("communications");
    assert_eq!(communications.len(), 1);
    assert_eq!(
        property(&communications[0], "callstream_call_key"),
        sms["identity"].as_str().unwrap()
    );
    // Each 429 was followed by a wait of at least its Retry-After.
    let requests = hub.requests();
    let limited: Vec<&super::hubspot_standin::Request> =
        requests.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 6, "the bursts were all answered");
    for r in limited {
        let next = requests
            .iter()
            // The same request (the calls and the SMS are delivered side
            // by side, each in order).
            .find(|n| n.at > r.at && n.method == r.method && n.path == r.path && n.body == r.body)
            .expect("tried again");
        assert!(
            next.at - r.at >= Duration::from_millis(950),
            "{} {} tried again {:?} after a 429 with Retry-After: 1",
            r.method,
            r.path,
            next.at - r.at
        );
    }
    assert_eq!(kafka.dead_letter_count(), 0);
}

/// With `archived_recordings`, the engagement plays the archived copy, not
/// the provider's expiring link, whether the copy is announced after the
/// call was logged or before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engagement_points_at_the_archived_recording_in_either_order() {
    let kafka = Kafka::start();
    let db = TestDatabase::create().await;
    let hub = HubSpotStandIn::start().await;
    let settings = hubspot_settings(
        &kafka.bootstrap(),
        &db,
        json!({"hub": target(&hub, json!({"archived_recordings": {
            "location_prefix": "s3://audio/",
            "url_prefix": "https://audio.example/",
        }}))}),
    );
    let archived = |event: &Value, file: &str| -> OutRecord {
        let copy: callstream_schemas::recording::RecordingArchived =
            serde_json::from_value(json!({
                "event_id": event["event_id"],
                "identity": event["identity"],
                "provider": "onoff",
                "tenant": "acme",
                "revision": 1,
                "media": "recording",
                "index": 0,
                "source": {"kind": "url", "url": "https://media.example/rec.mp3"},
                "location": format!("s3://audio/onoff/acme/{file}"),
                "size_bytes": 1234,
                "content_type": "audio/mpeg",
                "sha256": "00",
                "archived_at": "2023-05-20T14:40:00Z",
            }))
            .unwrap();
        callstream_kafka::wire::recording_record(&copy)
    };
    let with_recording = |id: &str| {
        let mut call = answered(id, "0612345678", AGENT);
        call["identity"] = json!(format!("onoff:acme:call:{id}"));
        call["recording"] = json!({"url": "https://media.example/rec.mp3?expires=1"});
        call
    };
    // Logged first, archived after.
    let after = with_recording("r-1");
    kafka.publish_call(&[&after], 1).await;
    let crm = start(&settings).await;
    wait("the call logged", || crm.events("hub", "delivered") == 1.0).await;
    assert_eq!(
        property(&only_call(&hub, "onoff:acme:r-1"), "hs_call_recording_url"),
        "https://media.example/rec.mp3?expires=1"
    );
    kafka.send_record(&archived(&after, "r-1.mp3")).await;
    // Archived first, logged after.
    let before = with_recording("r-2");
    kafka.send_record(&archived(&before, "r-2.mp3")).await;
    wait("both copies taken", || {
        crm.events("hub", "delivered") == 3.0
    })
    .await;
    kafka.publish_call(&[&before], 1).await;
    wait("the second call logged", || {
        crm.events("hub", "delivered") == 4.0
    })
    .await;
    crm.stop().await;

    for id in ["r-1", "r-2"] {
        assert_eq!(
            property(
                &only_call(&hub, &format!("onoff:acme:{id}")),
                "hs_call_recording_url"
            ),
            format!("https://audio.example/onoff/acme/{id}.mp3")
        );
    }
}
