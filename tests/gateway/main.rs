//! End-to-end: the real gateway on port 0, a real Kafka-protocol broker, and
//! a real consumer reading the topics back.
//!
//! One test binary; each module holds one concern, and the deliveries and
//! helpers they share are here.

mod admin;
mod answers;
mod declared;
mod outages;
mod providers;
mod signatures;

use callstream_schemas::Topic;
use callstream_testkit::{assert_valid_event, spawn_gateway, Record, TestGateway};
use reqwest::StatusCode;
use std::time::Duration;

const KEY: &str = "k-3f9a-secret";

const ONOFF_CDR: &str = r##"{"id":"cdr-1001","eventName":"CDR","onoffUserName":"John Doe","onoffUserEmail":"john.doe@example.com","onoffUserNumber":"1234567890","externalNumber":"0987654321","externalName":"John Smith","callStarted":"2023-05-20T14:30:00Z","callEnded":"2023-05-20T16:32:00+02:00","callDuration":300,"callDirection":"INBOUND","callStatus":"ANSWERED","callNotes":"Important notes","tags":[{"tagId":"17431723-0001","tagName":"Blue","tagColor":"#32A8FF"}]}"##;

const ONOFF_SMS: &str = r#"{"id":"sms-77","eventName":"SMS","onoffUserName":"John Doe","onoffUserNumber":"1234567890","externalNumber":"0987654321","date":"2023-05-20T14:30:00Z","smsDirection":"SENT","body":"This is the body of the SMS"}"#;

const TELECMI_LEG_A: &str = r#"{"virtual_number":"440000000000","call_id":"c4504776-d91e-123b-29a7-56000429abc3","custom":"{\"crm\":\"true\"}","leg":"a","type":"cdr","appid":2222223,"to":442000000000,"cmiuuid":"10ee0eb6-c417-4f5a-b122-bffe28f96eae","status":"answered","user":"202_2222223","time":1650630551178,"direction":"outbound","answeredsec":15,"hangup_reason":"recv_bye","request_id":"c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr"}"#;

const TELECMI_LEG_B: &str = r#"{"virtual_number":"440000000000","call_id":"c4504776-d91e-123b-29a7-56000429abc3","custom":"{\"crm\":\"true\"}","leg":"b","type":"cdr","appid":2222223,"to":"919342012824","cmiuuid":"0da4f02e-6ece-42e4-989b-1e6766b5a81e","status":"answered","user":"202_2222223","time":"1650630551178","direction":"outbound","answeredsec":6,"hangup_reason":"sent_bye","record":true,"filename":"16506305548176941220057791_2222223.mp3","request_id":"c0Sq3mbykoHgVgLfyWTr6cV6HB5Z0Fk4AXpZFkOClSr"}"#;

const XARIOS_JSON: &str = r#"{"triggerId":"trig-1","id":"user-1","tenantId":"tenant-9","cdr":{"id":"sess-42","dType":"CloudSessionCdr","sVer":1,"tz":"Europe/London","start":"2024-05-29T09:37:35+01:00","end":"2024-05-29T09:37:45+01:00","dur":10,"ring":10,"lost":1,"cause":"NORMAL_CLEARING","dir":2,"type":2,"cliNum":"+447000000000","ddiNum":"+441610000000","lRngUsrName":"Test User","lRngUsrNum":"302","hasRec":0,"tags":{"Support":"step1"}},"customData":{"hook":"post call"}}"#;

fn with_keys(f: figment::Figment) -> figment::Figment {
    f.merge(("sources.onoff.api_keys", [KEY]))
        .merge(("sources.xarios.api_keys", [KEY]))
        .merge(("sources.telecmi.api_keys", [KEY]))
}

async fn post_json(gw: &TestGateway, path: &str, body: &str) -> reqwest::Response {
    gw.client
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("gateway answers")
}

async fn error_of(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("error bodies are JSON");
    body["error"]
        .as_str()
        .expect("error bodies have an `error` string")
        .to_string()
}

/// Asserts nothing about a record (its headers or value) carries the key.
fn assert_no_secret(records: &[Record]) {
    for r in records {
        assert!(!String::from_utf8_lossy(&r.payload).contains(KEY));
        for (name, value) in &r.headers {
            assert!(
                !name.contains("authorization")
                    && !name.contains("api-key")
                    && !name.contains("api_key")
            );
            assert!(
                !String::from_utf8_lossy(value).contains(KEY),
                "header {name} leaks the key"
            );
        }
    }
}
