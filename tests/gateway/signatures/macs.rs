//! HMAC of the body, with or without a timestamp, and Ed25519.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_over_the_body() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "hmac"))
            .merge((
                "sources.onoff.signature.secrets",
                ["old-secret", "new-secret"],
            ))
            .merge(("sources.onoff.signature.header", "X-Hub-Signature-256"))
            .merge(("sources.onoff.signature.prefix", "sha256="))
    })
    .await;
    let signed = |n: u32, key: &str, body: Option<String>| {
        let sent = sms(n);
        let sig = format!(
            "sha256={}",
            hex(&mac(hmac::HMAC_SHA256, key, &[sent.as_bytes()]))
        );
        Try {
            what: "",
            path: "/v1/onoff/sms".into(),
            content_type: "application/json",
            headers: vec![("x-hub-signature-256", sig)],
            body: body.unwrap_or(sent),
        }
    };
    let mut missing = signed(5, "new-secret", None);
    missing.headers.clear();
    judge(
        gw,
        "hmac",
        "onoff",
        &[
            named("current secret", signed(1, "new-secret", None)),
            named(
                "rotated-out secret still listed",
                signed(2, "old-secret", None),
            ),
        ],
        &[
            named("tampered body", signed(3, "new-secret", Some(sms(33)))),
            named("wrong secret", signed(4, "guess", None)),
            named("missing header", missing),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_with_a_timestamp() {
    let gw = spawn_gateway(|f| {
        f.merge(("sources.telecmi.signature.scheme", "hmac_timestamped"))
            .merge(("sources.telecmi.signature.secrets", ["ps-secret"]))
            .merge(("sources.telecmi.signature.header", "X-PS-Signature"))
    })
    .await;
    let signed = |leg: &str, t: u64, key: &str, tamper: bool| {
        let body = if leg == "a" {
            TELECMI_LEG_A
        } else {
            TELECMI_LEG_B
        };
        let sig = hex(&mac(
            hmac::HMAC_SHA256,
            key,
            &[t.to_string().as_bytes(), b".", body.as_bytes()],
        ));
        Try {
            what: "",
            path: "/v1/telecmi/cdr".into(),
            content_type: "application/json",
            headers: vec![("x-ps-signature", format!("t={t},v1={sig}"))],
            body: if tamper {
                body.replace("answered", "missed")
            } else {
                body.to_string()
            },
        }
    };
    let t = now();
    judge(
        gw,
        "hmac_timestamped",
        "telecmi",
        &[
            named("fresh", signed("a", t, "ps-secret", false)),
            named("a minute old", signed("b", t - 60, "ps-secret", false)),
        ],
        &[
            named("stale timestamp", signed("a", t - 3600, "ps-secret", false)),
            named("tampered body", signed("a", t, "ps-secret", true)),
            named("wrong secret", signed("a", t, "other", false)),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_over_timestamp_and_body() {
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pair = |_| {
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap()
    };
    let (current, previous, stranger) = (pair(0), pair(1), pair(2));
    let keys = [
        STANDARD.encode(current.public_key().as_ref()),
        STANDARD.encode(previous.public_key().as_ref()),
    ];
    let gw = spawn_gateway(|f| {
        f.merge(("sources.onoff.signature.scheme", "ed25519"))
            .merge(("sources.onoff.signature.public_keys", keys))
    })
    .await;
    let signed = |n: u32, t: u64, key: &Ed25519KeyPair| {
        let body = sms(n);
        let sig = key.sign(&[t.to_string().as_bytes(), b"|", body.as_bytes()].concat());
        Try {
            what: "",
            path: "/v1/onoff/sms".into(),
            content_type: "application/json",
            headers: vec![
                ("telnyx-signature-ed25519", STANDARD.encode(sig.as_ref())),
                ("telnyx-timestamp", t.to_string()),
            ],
            body,
        }
    };
    let t = now();
    let mut tampered = signed(3, t, &current);
    tampered.body = sms(33);
    let mut no_timestamp = signed(6, t, &current);
    no_timestamp.headers.truncate(1);
    judge(
        gw,
        "ed25519",
        "onoff",
        &[
            named("current key", signed(1, t, &current)),
            named("previous key, still listed", signed(2, t, &previous)),
        ],
        &[
            named("tampered body", tampered),
            named("a key not configured", signed(4, t, &stranger)),
            named("stale timestamp", signed(5, t - 3600, &current)),
            named("missing timestamp header", no_timestamp),
        ],
    )
    .await;
}
