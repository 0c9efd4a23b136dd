//! `callstream-analytics` in-process: the sink as a task of the test, a real
//! Kafka-protocol broker, a real PostgreSQL. Every KPI row is compared with
//! what the produced calls add up to, computed from the test's own
//! description of them (`callstream_testkit::expected::expected`).

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus::Registry;

use callstream_consumers::analytics::AnalyticsWriter;
use callstream_runtime::server::MetricsServer;
use callstream_testkit::count_records;
use callstream_testkit::expected::{actual, assert_counted_once, assert_kpis, expected, totals};
use callstream_testkit::sinks::{produce, setup, start_sink, wait_caught_up};
use callstream_testkit::unique::{
    a_call_and_its_update_after_the_window, at, finals, scenario, spec, unique_topic, Joined,
    Outcome, Revision, Spec,
};

const GROUP: &str = "callstream-analytics";
const CATCH_UP: Duration = Duration::from_secs(60);

/// The newest revision of every event in `records`.
fn newest(records: &[Revision]) -> Vec<Revision> {
    finals(records).into_values().collect()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect("query runs").get(0)
}

/// Sum of a metric's samples in `registry`.
fn metric_sum(registry: &Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpis_are_exact_with_resends_updates_and_uncounted_events() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let records = scenario(
        "k",
        600,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:30:00Z"),
    );
    produce(&bootstrap, &records, None).await;
    let registry = Registry::new();
    let writer = AnalyticsWriter::new(&registry, &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer).await;
    let end = count_records(&bootstrap, unique_topic());
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;

    let newest = newest(&records);
    let want = expected(&newest);
    assert_kpis(&actual(&client).await, &want);
    assert_counted_once(&client, &newest).await;

    // The scenario exercises what it claims to: recounts, voicemail, SMS,
    // calls bucketed by receipt, uncounted kinds.
    let recounted = newest
        .iter()
        .filter(|r| matches!(&r.spec, Spec::Call(c) if c.talk_seconds == 42))
        .count();
    assert!(recounted >= 3, "{recounted} missed calls answered later");
    let totals = totals(&want);
    assert!(totals.voicemail > 0 && totals.sms_sent > 0 && totals.sms_received > 0);
    assert!(newest
        .iter()
        .any(|r| matches!(&r.spec, Spec::Call(c) if c.started_at.is_none())));
    assert!(newest
        .iter()
        .any(|r| matches!(r.spec, Spec::AgentLeg { .. })));
    // Calls of two events: counted once each.
    for how in [Joined::SecondTrigger, Joined::Voicemail] {
        assert!(
            newest
                .iter()
                .any(|r| matches!(&r.spec, Spec::Joined(_, h) if *h == how)),
            "{how:?}"
        );
    }

    // Rates and averages come from the views.
    let answered = newest
        .iter()
        .filter_map(|r| match &r.spec {
            Spec::Call(c) if c.outcome == Outcome::Answered => Some(c.talk_seconds),
            _ => None,
        })
        .collect::<Vec<_>>();
    let row = client
        .query_one(
            "SELECT sum(calls_answered)::float8 / sum(calls_offered), sum(talk_seconds_sum) / sum(talk_count)
             FROM kpi_by_interval WHERE interval_minutes = 15",
            &[],
        )
        .await
        .expect("report view");
    let (rate, avg_talk): (f64, f64) = (row.get(0), row.get(1));
    assert_eq!(rate, answered.len() as f64 / totals.offered as f64);
    assert_eq!(
        avg_talk,
        answered.iter().map(|t| f64::from(*t)).sum::<f64>() / answered.len() as f64
    );
    let view_rate: f64 = client
        .query_one(
            "SELECT answer_rate FROM kpi_by_interval
             WHERE tenant = 'acme' AND interval_minutes = 15 AND calls_offered > 0
             ORDER BY bucket_start, provider, direction LIMIT 1",
            &[],
        )
        .await
        .expect("a row with calls")
        .get(0);
    let first = want
        .iter()
        .find(|(k, v)| k.0 == "all" && k.1 == "acme" && k.2 == 15 && v.offered > 0)
        .map(|(_, v)| v.answered as f64 / v.offered as f64);
    assert_eq!(Some(view_rate), first);
    let agent_calls = want
        .iter()
        .filter(|(k, _)| k.0 == "agent" && k.2 == 1)
        .map(|(_, v)| v.offered)
        .sum::<i64>();
    assert_eq!(
        count(
            &client,
            "SELECT sum(calls_offered)::bigint FROM kpi_by_agent WHERE interval_minutes = 1"
        )
        .await,
        agent_calls
    );

    // Live counters: one count per counted event, after commit.
    let counted = want
        .iter()
        .filter(|(k, _)| k.0 == "all" && k.2 == 1)
        .map(|(_, v)| v.offered + v.sms_sent + v.sms_received)
        .sum::<i64>();
    assert_eq!(
        metric_sum(&registry, "callstream_analytics_events_counted_total"),
        counted as f64
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_events_land_in_their_own_interval() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let on_time = scenario(
        "now",
        200,
        at("2024-06-03T10:00:00Z"),
        at("2024-06-03T12:00:00Z"),
    );
    produce(&bootstrap, &on_time, None).await;
    let writer = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer).await;
    wait_caught_up(&client, GROUP, on_time.len() as i64, CATCH_UP).await;
    let before = actual(&client).await;

    // Calls from three hours earlier, delivered late.
    let late = scenario(
        "late",
        60,
        at("2024-06-03T07:00:00Z"),
        at("2024-06-03T12:40:00Z"),
    );
    produce(&bootstrap, &late, None).await;
    let end = (on_time.len() + late.len()) as i64;
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;
    let after = actual(&client).await;

    let all: Vec<Revision> = on_time.iter().chain(&late).cloned().collect();
    assert_kpis(&after, &expected(&newest(&all)));
    // Only the late events' own intervals changed (and, for the calls
    // without a start time, the interval they were received in).
    let late_window = at("2024-06-03T07:00:00Z")..at("2024-06-03T09:00:00Z");
    // 12:40 is received_at; 12:30 its 15-minute interval.
    let received = [at("2024-06-03T12:40:00Z"), at("2024-06-03T12:30:00Z")];
    for (key, value) in &after {
        if before.get(key) != Some(value) {
            assert!(
                late_window.contains(&key.3) || received.contains(&key.3),
                "a late event changed {key:?}"
            );
        }
    }
    assert!(after
        .keys()
        .any(|k| k.3 < at("2024-06-03T09:00:00Z") && k.0 == "agent"));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_a_full_replay_never_count_twice() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let received = at("2024-06-03T12:00:00Z");
    let wave1 = scenario("r1", 200, base, received);
    produce(&bootstrap, &wave1, None).await;
    let writer = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-1", writer).await;
    wait_caught_up(&client, GROUP, wave1.len() as i64, CATCH_UP).await;
    sink.stop().await;

    // While it is down: wave 1 again, every call of wave 1 updated to
    // answered (revision 9), and new events.
    let mut wave2 = wave1.clone();
    // (A second Xarios trigger reports the update too: both triggers
    // carry the same CDR.)
    for r in newest(&wave1) {
        if let Spec::Call(c) | Spec::Joined(c, Joined::SecondTrigger) = &r.spec {
            if c.outcome != Outcome::Voicemail {
                wave2.push(r.updated(9, |s| {
                    if let Spec::Call(c) | Spec::Joined(c, _) = s {
                        c.outcome = Outcome::Answered;
                        c.talk_seconds = 77;
                    }
                }));
            }
        }
    }
    wave2.extend(scenario("r2", 100, base, received));
    produce(&bootstrap, &wave2, None).await;
    let all: Vec<Revision> = wave1.iter().chain(&wave2).cloned().collect();
    let want = expected(&newest(&all));

    // A fresh Kafka group would start at the beginning: the stored
    // positions decide.
    let writer = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-2", writer).await;
    let end = count_records(&bootstrap, unique_topic());
    wait_caught_up(&client, GROUP, end, CATCH_UP).await;
    assert_eq!(sink.metrics.consumed.get(), wave2.len() as u64);
    sink.stop().await;
    assert_kpis(&actual(&client).await, &want);

    // Positions lost (a new group): the whole topic again into the same
    // tables. Every event is already counted at its revision: nothing moves.
    let writer = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
    let replay = start_sink(&bootstrap, &db.url, "replay", "kafka-3", writer).await;
    wait_caught_up(&client, "replay", end, CATCH_UP).await;
    replay.stop().await;
    assert_kpis(&actual(&client).await, &want);
}

/// The `tenant` label values of the analytics series in a `/metrics` page.
fn tenant_labels(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| line.starts_with("callstream_analytics_"))
        .filter_map(|line| {
            let value = &line[line.find("tenant=\"")? + "tenant=\"".len()..];
            Some(value[..value.find('"')?].to_string())
        })
        .collect()
}

/// Tenants come from payloads (Xarios `tenantId`, TeleCMI `appid`): 500
/// of them once made 500 label values each. Only the tenants of
/// `analytics.metric_tenants` (and the gateway's `default`) keep their own
/// label; every other one is counted as `other`. The KPI tables stay exact
/// per tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_tenant_labels_are_bounded_while_the_tables_stay_exact() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let records: Vec<Revision> = (0..500)
        .filter_map(|i| {
            let mut spec = spec("mt", i, base);
            match &mut spec {
                Spec::Call(c) => c.tenant = format!("tenant-{i}"),
                Spec::Sms(s) => s.tenant = format!("tenant-{i}"),
                Spec::Progress { .. } | Spec::AgentLeg { .. } | Spec::Joined(..) => return None,
            }
            Some(Revision {
                spec,
                revision: 1,
                received_at: at("2024-06-03T12:30:00Z"),
            })
        })
        .collect();
    let want = expected(&records);
    let tenants: BTreeSet<&str> = want.keys().map(|k| k.1.as_str()).collect();
    assert!(tenants.len() > 400, "{} tenants", tenants.len());
    let configured: Vec<String> = tenants.iter().take(2).map(|t| t.to_string()).collect();
    produce(&bootstrap, &records, None).await;
    let registry = Registry::new();
    let writer = AnalyticsWriter::new(&registry, &configured).expect("metrics register");
    let metrics = MetricsServer::bind("127.0.0.1:0", registry.clone()).expect("binds");
    let metrics_url = format!("http://127.0.0.1:{}/metrics", metrics.port);
    let metrics = metrics.spawn();
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer).await;
    wait_caught_up(&client, GROUP, records.len() as i64, CATCH_UP).await;

    let page = reqwest::get(&metrics_url)
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a text page");
    let labels = tenant_labels(&page);
    let mut allowed: BTreeSet<String> = configured.iter().cloned().collect();
    allowed.insert("other".into());
    assert_eq!(
        labels, allowed,
        "at most the configured tenants and `other`"
    );
    let counted = |tenant: &str| -> f64 {
        let pattern = format!("tenant=\"{tenant}\"");
        page.lines()
            .filter(|l| l.starts_with("callstream_analytics_events_counted_total{"))
            .filter(|l| l.contains(&pattern))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    for tenant in &configured {
        assert_eq!(counted(tenant), 1.0, "{tenant} keeps its label");
    }
    let all = metric_sum(&registry, "callstream_analytics_events_counted_total");
    assert_eq!(all, records.len() as f64);
    assert_eq!(counted("other"), all - configured.len() as f64);

    assert_kpis(&actual(&client).await, &want);
    assert_eq!(
        count(&client, "SELECT count(DISTINCT tenant) FROM kpi_rollups").await,
        tenants.len() as i64,
        "the tables keep every tenant"
    );
    sink.stop().await;
    metrics.stop(true).await;
}

/// A record PostgreSQL refuses (here an agent id holding a NUL character,
/// which no `text` key may hold) is set aside in `rejected_events` and
/// counts nowhere; every other event of its batch is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_postgresql_refuses_is_set_aside_and_the_rest_counted() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let base = at("2024-06-03T10:00:00Z");
    let mut records: Vec<Revision> = (0..40)
        .map(|i| Revision {
            spec: spec("n", i, base),
            revision: 1,
            received_at: at("2024-06-03T12:30:00Z"),
        })
        .collect();
    let Spec::Call(poisoned) = &mut records[1].spec else {
        panic!("the scenario's second event is a call");
    };
    poisoned.agent = "21\u{0}0".into();
    produce(&bootstrap, &records, Some(0)).await;
    let registry = Registry::new();
    let writer = AnalyticsWriter::new(&registry, &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer).await;
    wait_caught_up(&client, GROUP, records.len() as i64, CATCH_UP).await;

    let counted: Vec<Revision> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, r)| r.clone())
        .collect();
    assert_kpis(&actual(&client).await, &expected(&counted));
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM rejected_events
             WHERE consumer_group = 'callstream-analytics' AND record_offset = 1"
        )
        .await,
        1
    );
    assert_eq!(sink.metrics.rejected.get(), 1);
    sink.stop().await;
}

/// A missed call reported answered a week later, after dedup's window
/// (revision 1 again, received later), moves the counts; the same content
/// later still, and the original replayed, change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_after_the_dedup_window_moves_the_counts_once() {
    let (broker, db, client) = setup().await;
    let bootstrap = broker.bootstrap_servers();
    let (first, late) = a_call_and_its_update_after_the_window(|s| {
        if let Spec::Call(c) = s {
            c.outcome = Outcome::Answered;
            c.talk_seconds = 42;
        }
    });
    let mut late_resend = late.clone();
    late_resend.received_at = at("2024-06-11T09:00:00Z");
    let records = vec![first.clone(), late, late_resend, first];
    let writer = AnalyticsWriter::new(&Registry::new(), &[]).expect("metrics register");
    let sink = start_sink(&bootstrap, &db.url, GROUP, "kafka-group", writer).await;
    // One record at a time, so each meets what is counted, not a batch-mate.
    for (i, record) in records.iter().enumerate() {
        produce(&bootstrap, std::slice::from_ref(record), Some(0)).await;
        wait_caught_up(&client, GROUP, i as i64 + 1, CATCH_UP).await;
    }
    let want = expected(&newest(&records));
    assert_kpis(&actual(&client).await, &want);
    let totals = want.iter().filter(|(k, _)| k.0 == "all" && k.2 == 15).fold(
        (0, 0, 0),
        |(offered, answered, missed), (_, k)| {
            (
                offered + k.offered,
                answered + k.answered,
                missed + k.missed,
            )
        },
    );
    assert_eq!(totals, (1, 1, 0), "one call, answered");
    sink.stop().await;
}
