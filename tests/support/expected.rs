//! What the PostgreSQL consumers' tables must hold after a test produced
//! its [`Spec`]s: the store's rows, and the KPI rows, computed from the specs
//! (not from the events, and not with the consumer's code); and the tables
//! read back for comparison.

use std::collections::{BTreeMap, HashMap};

use callstream_schemas::ProviderId;
use chrono::{DateTime, Utc};

use crate::unique::{finals, Joined, Outcome, Revision, Spec};

/// The key of a `kpi_rollups` row: (dimension, tenant, interval minutes,
/// bucket start, provider, direction, agent or number; "" for `all`).
pub type KpiKey = (
    &'static str,
    String,
    i32,
    DateTime<Utc>,
    &'static str,
    &'static str,
    String,
);

/// The counters of one KPI row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Kpi {
    pub offered: i64,
    pub answered: i64,
    pub missed: i64,
    pub voicemail: i64,
    pub talk_sum: f64,
    pub talk_count: i64,
    pub ring_sum: f64,
    pub ring_count: i64,
    pub sms_sent: i64,
    pub sms_received: i64,
}

impl Kpi {
    fn add(&mut self, o: &Kpi) {
        self.offered += o.offered;
        self.answered += o.answered;
        self.missed += o.missed;
        self.voicemail += o.voicemail;
        self.talk_sum += o.talk_sum;
        self.talk_count += o.talk_count;
        self.ring_sum += o.ring_sum;
        self.ring_count += o.ring_count;
        self.sms_sent += o.sms_sent;
        self.sms_received += o.sms_received;
    }
}

/// The sum of the whole-centre 15-minute rows of `kpis`: the totals.
pub fn totals(kpis: &BTreeMap<KpiKey, Kpi>) -> Kpi {
    kpis.iter().filter(|(k, _)| k.0 == "all" && k.2 == 15).fold(
        Kpi::default(),
        |mut sum, (_, k)| {
            sum.add(k);
            sum
        },
    )
}

fn floor(t: DateTime<Utc>, minutes: i32) -> DateTime<Utc> {
    let step = i64::from(minutes) * 60;
    DateTime::from_timestamp(t.timestamp() / step * step, 0).expect("a time after 1970")
}

/// What the newest revisions in `finals` add up to in the three tables.
///
/// An event without a start time is bucketed by its final's
/// `received_at`; analytics keeps it where its *first* content was
/// counted. The two agree while an event's contents share a receipt time,
/// as in every scenario here; a test of a late update without a start
/// time needs its own expectation.
pub fn expected<'a>(finals: impl IntoIterator<Item = &'a Revision>) -> BTreeMap<KpiKey, Kpi> {
    let finals: Vec<&Revision> = finals.into_iter().collect();
    // Calls one of whose other events is their voicemail went to voicemail.
    let to_voicemail: std::collections::HashSet<&str> = finals
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Joined(c, Joined::Voicemail) => Some(c.id.as_str()),
            _ => None,
        })
        .collect();
    let mut rows: BTreeMap<KpiKey, Kpi> = BTreeMap::new();
    for r in finals {
        let (tenant, provider, direction, at, agent, number, kpi) = match &r.spec {
            Spec::Call(c) => {
                let mut k = Kpi {
                    offered: 1,
                    ..Kpi::default()
                };
                // The merge's precedence: answered, then voicemail.
                let outcome =
                    if to_voicemail.contains(c.id.as_str()) && c.outcome != Outcome::Answered {
                        Outcome::Voicemail
                    } else {
                        c.outcome
                    };
                match outcome {
                    Outcome::Answered => {
                        k.answered = 1;
                        k.talk_sum = f64::from(c.talk_seconds);
                        k.talk_count = 1;
                    }
                    Outcome::Missed => k.missed = 1,
                    Outcome::Voicemail => k.voicemail = 1,
                }
                if c.reports_ring() {
                    k.ring_sum = f64::from(c.ring_seconds);
                    k.ring_count = 1;
                }
                // Xarios events carry no line: the agent's extension is the number.
                let number = match c.provider {
                    ProviderId::Xarios => &c.agent,
                    _ => &c.line,
                };
                (
                    &c.tenant,
                    c.provider.as_str(),
                    if c.inbound { "inbound" } else { "outbound" },
                    c.started_at.unwrap_or(r.received_at),
                    &c.agent,
                    number,
                    k,
                )
            }
            Spec::Sms(s) => (
                &s.tenant,
                "onoff",
                if s.sent { "outbound" } else { "inbound" },
                s.at,
                &s.agent,
                &s.line,
                Kpi {
                    sms_sent: i64::from(s.sent),
                    sms_received: i64::from(!s.sent),
                    ..Kpi::default()
                },
            ),
            // Counted with its call.
            Spec::Progress { .. } | Spec::AgentLeg { .. } | Spec::Joined(..) => continue,
        };
        for minutes in [1, 15] {
            let bucket = floor(at, minutes);
            for (dimension, value) in [
                ("all", ""),
                ("agent", agent.as_str()),
                ("number", number.as_str()),
            ] {
                let key = (
                    dimension,
                    tenant.clone(),
                    minutes,
                    bucket,
                    provider,
                    direction,
                    value.to_string(),
                );
                rows.entry(key).or_default().add(&kpi);
            }
        }
    }
    rows
}

fn known(value: &str, names: &[&'static str]) -> &'static str {
    names
        .iter()
        .find(|n| **n == value)
        .copied()
        .unwrap_or_else(|| panic!("unexpected value `{value}` in kpi_rollups"))
}

/// Every non-zero row of `kpi_rollups`. (A row an update emptied, by
/// moving its event to another bucket, stays with all counters 0.)
pub async fn actual(db: &tokio_postgres::Client) -> BTreeMap<KpiKey, Kpi> {
    let mut rows = BTreeMap::new();
    let sql = "SELECT dimension, tenant, interval_minutes, bucket_start, provider, direction,
                      dimension_value, calls_offered, calls_answered, calls_missed,
                      calls_voicemail, talk_seconds_sum, talk_count, ring_seconds_sum,
                      ring_count, sms_sent, sms_received
               FROM kpi_rollups";
    for row in db.query(sql, &[]).await.expect("kpi_rollups is readable") {
        let kpi = Kpi {
            offered: row.get("calls_offered"),
            answered: row.get("calls_answered"),
            missed: row.get("calls_missed"),
            voicemail: row.get("calls_voicemail"),
            talk_sum: row.get("talk_seconds_sum"),
            talk_count: row.get("talk_count"),
            ring_sum: row.get("ring_seconds_sum"),
            ring_count: row.get("ring_count"),
            sms_sent: row.get("sms_sent"),
            sms_received: row.get("sms_received"),
        };
        if kpi == Kpi::default() {
            continue;
        }
        let key = (
            known(row.get("dimension"), &["all", "agent", "number"]),
            row.get("tenant"),
            row.get("interval_minutes"),
            row.get("bucket_start"),
            known(row.get("provider"), &["onoff", "xarios", "telecmi"]),
            known(
                row.get("direction"),
                &["inbound", "outbound", "internal", "unknown"],
            ),
            row.get("dimension_value"),
        );
        rows.insert(key, kpi);
    }
    rows
}

/// Asserts `kpi_rollups` holds exactly `expected`, naming the first differences.
pub fn assert_kpis(actual: &BTreeMap<KpiKey, Kpi>, expected: &BTreeMap<KpiKey, Kpi>) {
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: expected {v:?}, got {:?}", actual.get(k)))
        .chain(
            actual
                .iter()
                .filter(|(k, _)| !expected.contains_key(*k))
                .map(|(k, v)| format!("{k:?}: unexpected row {v:?}")),
        )
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "kpi_rollups differs ({} rows expected, {} found):\n{}",
        expected.len(),
        actual.len(),
        wrong.join("\n")
    );
}

/// identity → (revision, fingerprint, event JSON) of every row of `events`.
pub async fn store_rows(
    db: &tokio_postgres::Client,
) -> HashMap<String, (i32, String, serde_json::Value)> {
    db.query(
        "SELECT identity, revision, fingerprint, event FROM events",
        &[],
    )
    .await
    .expect("events is readable")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect()
}

/// Exactly one row per identity in `records`, holding its newest revision,
/// whole.
pub async fn assert_newest_revisions(db: &tokio_postgres::Client, records: &[Revision]) {
    let expected = finals(records);
    let rows = store_rows(db).await;
    assert_eq!(rows.len(), expected.len(), "one row per event");
    for (identity, newest) in &expected {
        let event = newest.event();
        let (revision, fingerprint, stored) = rows
            .get(identity)
            .unwrap_or_else(|| panic!("no row for {identity}"));
        assert_eq!(
            (*revision, fingerprint.as_str()),
            (newest.revision, event.fingerprint.as_str()),
            "{identity}"
        );
        assert_eq!(
            stored,
            &serde_json::to_value(&event).expect("serializes"),
            "{identity}"
        );
    }
}

/// The calls the newest revisions in `finals` make: their events grouped by
/// call key and merged (`callstream_schemas::call`, unit-tested per
/// provider there), by call key.
pub fn expected_calls<'a>(
    finals: impl IntoIterator<Item = &'a Revision>,
) -> BTreeMap<String, callstream_schemas::call::Call> {
    let mut by_call: BTreeMap<String, Vec<callstream_schemas::Event>> = BTreeMap::new();
    for r in finals {
        let event = r.event();
        if let Some(key) = callstream_schemas::call::call_key(&event) {
            by_call.entry(key).or_default().push(event);
        }
    }
    by_call
        .into_iter()
        .map(|(key, events)| {
            let call = callstream_schemas::call::Call::from_events(&events).expect("a call");
            (key, call)
        })
        .collect()
}

/// Asserts `calls` holds exactly `expected`: one row per call, with its
/// merged state, and its columns agreeing with it.
pub async fn assert_calls(
    db: &tokio_postgres::Client,
    expected: &BTreeMap<String, callstream_schemas::call::Call>,
) {
    let rows = db
        .query(
            "SELECT call_key, call, status, tenant, revision FROM calls",
            &[],
        )
        .await
        .expect("calls is readable");
    assert_eq!(rows.len(), expected.len(), "one row per call");
    for row in rows {
        let key: String = row.get(0);
        let stored: callstream_schemas::call::Call =
            serde_json::from_value(row.get(1)).expect("a call");
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected call {key}"));
        assert_eq!(&stored, want, "{key}");
        let status: String = row.get(2);
        assert_eq!(
            serde_json::to_value(want.status).unwrap(),
            serde_json::Value::from(status),
            "{key}"
        );
        assert_eq!(row.get::<_, String>(3), want.tenant);
        assert!(row.get::<_, i64>(4) >= 1);
    }
}

/// Asserts analytics counted each call once (`kpi_calls`) and each other
/// event once (`kpi_events`).
pub async fn assert_counted_once<'a>(
    db: &tokio_postgres::Client,
    finals: impl IntoIterator<Item = &'a Revision>,
) {
    let finals: Vec<&Revision> = finals.into_iter().collect();
    let calls = expected_calls(finals.iter().copied()).len() as i64;
    let others = finals
        .iter()
        .filter(|r| callstream_schemas::call::call_key(&r.event()).is_none())
        .count() as i64;
    let count = |sql: &'static str| async move {
        db.query_one(sql, &[])
            .await
            .expect("readable")
            .get::<_, i64>(0)
    };
    assert_eq!(
        count("SELECT count(*) FROM kpi_calls").await,
        calls,
        "one kpi_calls row per call"
    );
    assert_eq!(
        count("SELECT count(*) FROM kpi_events").await,
        others,
        "one kpi_events row per event that is no call's"
    );
}
