//! The built-in Telnyx source, signed as Telnyx signs: Ed25519 over
//! `<telnyx-timestamp>|<body>` (the `ed25519` scheme).

use super::*;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// Telnyx's documented `call.hangup` example, byte for byte what is signed.
const HANGUP: &str = r#"{"data":{"record_type":"event","event_type":"call.hangup","id":"0ccc7b54-4df3-4bca-a65a-3da1ecc777f0","occurred_at":"2018-02-02T22:25:27.521992Z","payload":{"call_control_id":"v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg","connection_id":"7267xxxxxxxxxxxxxx","call_leg_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1","call_session_id":"428c31b6-7af4-4bcb-b7f5-5013ef9657c1","client_state":"aGF2ZSBhIG5pY2UgZGF5ID1d","from":"+35319605860","to":"+35319605860","start_time":"2018-02-02T22:20:27.521992Z","state":"hangup","hangup_cause":"call_rejected","hangup_source":"caller","sip_hangup_cause":"603","call_quality_stats":{"inbound":{"jitter_max_variance":"2.74","jitter_packet_count":"0","mos":"4.50","packet_count":"591","skip_packet_count":"9"},"outbound":{"packet_count":"0","skip_packet_count":"0"}}}}}"#;

fn key_pair(rng: &ring::rand::SystemRandom) -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng).expect("a key");
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("a generated key reads back")
}

/// `sources.telnyx.signature` with the `ed25519` scheme and the account's
/// public key: the signed hangup is taken and normalized, the same
/// delivery with a changed body refused and nowhere in Kafka.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnyx_call_hangup_end_to_end() {
    let rng = ring::rand::SystemRandom::new();
    let key = key_pair(&rng);
    let gw = spawn_gateway(|f| {
        f.merge(("sources.telnyx.signature.scheme", "ed25519"))
            .merge((
                "sources.telnyx.signature.public_keys",
                [STANDARD.encode(key.public_key().as_ref())],
            ))
    })
    .await;
    let t = now().to_string();
    let signature = STANDARD.encode(
        key.sign(&[t.as_bytes(), b"|", HANGUP.as_bytes()].concat())
            .as_ref(),
    );
    let post = |body: String| {
        gw.client
            .post(gw.url("/v1/telnyx/webhook"))
            .header("content-type", "application/json")
            .header("telnyx-signature-ed25519", &signature)
            .header("telnyx-timestamp", &t)
            .body(body)
            .send()
    };

    let ok = post(HANGUP.to_string()).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK, "{}", ok.text().await.unwrap());
    let tampered = post(HANGUP.replace("call_rejected", "normal_clearing"))
        .await
        .unwrap();
    assert_eq!(tampered.status(), StatusCode::UNAUTHORIZED);
    assert!(error_of(tampered)
        .await
        .contains("invalid signature (ed25519)"));

    let raw = gw.read(Topic::Raw, 1);
    assert_eq!(raw.len(), 1, "the tampered delivery left nothing");
    assert_eq!(
        raw[0].payload,
        HANGUP.as_bytes(),
        "the raw body, byte for byte"
    );
    for (name, _) in &raw[0].headers {
        assert!(!name.contains("signature"), "{name} copied into the record");
    }
    let event = gw.read(Topic::Events, 1)[0].json();
    assert_valid_event(&event);
    assert_eq!(
        (
            &event["provider"],
            &event["kind"],
            &event["status"],
            &event["provider_status"]
        ),
        (
            &"telnyx".into(),
            &"call".into(),
            &"failed".into(),
            &"call_rejected".into()
        )
    );
    assert_eq!(
        event["identity"],
        "telnyx:default:call:428c31b6-7af4-4bcb-b7f5-5013ef9657c1"
    );
    assert_eq!(gw.count(Topic::Raw), 1);
    assert_eq!(gw.count(Topic::Events), 1);
    assert_eq!(gw.count(Topic::Dlq), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("callstream_gateway_auth_failures_total{source=\"telnyx\"} 1"),
        "the refusal is counted"
    );
    gw.stop().await;
}
