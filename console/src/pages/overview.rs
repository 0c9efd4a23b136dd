//! `/`: the overview. Deliveries per source per minute over the last hour
//! (from the store's `events`, by the time the gateway received them),
//! answers by outcome and the spool (from the gateway's `/metrics`), each
//! consumer's lag (from every `/metrics` in `console.metrics`), and the
//! dead letters of the last hour. No Prometheus server is needed.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, DurationRound, Utc};
use maud::{html, Markup};

use callstream_schemas::Topic;

use crate::pages::dead_letters::shown;
use crate::prom::{self, Sample};
use crate::{kafka, Shared};

const MINUTES: i64 = 60;
const COLOURS: [&str; 6] = [
    "#0b5cad", "#d9822b", "#1d6b2a", "#a3160e", "#6f42c1", "#5c6b7a",
];

pub async fn page(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let user = super::user(&req);
    let now = Utc::now();
    let (deliveries, scraped, letters) = futures_util::join!(
        deliveries(&shared, now),
        scrape(&shared),
        recent_letters(&shared, now)
    );
    let gateway: Vec<&Sample> = scraped
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .flatten()
        .filter(|s| s.name.starts_with("callstream_gateway_"))
        .collect();
    let gateway: Vec<Sample> = gateway.into_iter().cloned().collect();
    let body = html! {
        section id="deliveries" aria-labelledby="deliveries-h" {
            h2 id="deliveries-h" { "Deliveries per source per minute, last hour" }
            (deliveries)
        }
        section id="answers" aria-labelledby="answers-h" {
            h2 id="answers-h" { "Gateway answers by outcome, since it started" }
            (answers(&gateway))
        }
        section id="spool" aria-labelledby="spool-h" {
            h2 id="spool-h" { "Spool" }
            (spool(&gateway))
        }
        section id="lag" aria-labelledby="lag-h" {
            h2 id="lag-h" { "Consumer lag" }
            (lag(&scraped))
        }
        section id="dead-letters-recent" aria-labelledby="dl-h" {
            h2 id="dl-h" { "Dead letters, last hour" }
            (letters)
            p { a href="/dead-letters" { "All dead letters" } }
        }
    };
    super::html(crate::html::page("Overview", &user, "/", body))
}

/// Every configured `/metrics`, read at once: name → samples or the error.
async fn scrape(shared: &Shared) -> Vec<(String, Result<Vec<Sample>, String>)> {
    let reads = shared
        .settings
        .console
        .metrics
        .iter()
        .map(|(name, url)| async move {
            let text = async {
                let r = shared.http.get(url).send().await?.error_for_status()?;
                r.text().await
            }
            .await;
            (
                name.clone(),
                text.map(|t| prom::parse(&t)).map_err(|e| e.to_string()),
            )
        });
    futures_util::future::join_all(reads).await
}

async fn deliveries(shared: &Shared, now: DateTime<Utc>) -> Markup {
    let start =
        now.duration_trunc(Duration::minutes(1)).unwrap_or(now) - Duration::minutes(MINUTES - 1);
    let rows = shared
        .db
        .query(
            "SELECT provider, date_trunc('minute', received_at) AS m, count(*) FROM events \
             WHERE received_at >= $1 GROUP BY 1, 2",
            &[&start],
        )
        .await;
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return html! { p class="bad" role="alert" { "PostgreSQL: " (e) } },
    };
    // provider → minute index → count
    let mut per: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        let provider: String = r.get(0);
        let minute: DateTime<Utc> = r.get(1);
        let i = (minute - start).num_minutes();
        if (0..MINUTES).contains(&i) {
            per.entry(provider)
                .or_insert_with(|| vec![0; MINUTES as usize])[i as usize] += r.get::<_, i64>(2);
        }
    }
    if per.is_empty() {
        return html! { p { "No deliveries stored in the last hour." } };
    }
    let totals: Vec<i64> = (0..MINUTES as usize)
        .map(|i| per.values().map(|v| v[i]).sum())
        .collect();
    let peak = totals.iter().copied().max().unwrap_or(1).max(1);
    let (w, h, bar) = (600.0, 120.0, 600.0 / MINUTES as f64);
    html! {
        svg width="600" height="140" viewBox="0 0 600 140" role="img"
            aria-label={"Deliveries per minute over the last hour, at most " (peak) " in a minute"} {
            @for i in 0..MINUTES as usize {
                @let mut y = h;
                @for (n, (_, counts)) in per.iter().enumerate() {
                    @let height = counts[i] as f64 / peak as f64 * (h - 10.0);
                    @if counts[i] > 0 {
                        rect x=(format!("{:.1}", i as f64 * bar)) y=(format!("{:.1}", { y -= height; y }))
                            width=(format!("{:.1}", bar - 1.0)) height=(format!("{:.1}", height))
                            fill=(COLOURS[n % COLOURS.len()]) {}
                    }
                }
            }
            line x1="0" y1=(h) x2=(w) y2=(h) stroke="#888" {}
            text x="0" y="135" { "-60 min" }
            text x="560" y="135" { "now" }
            text x="0" y="10" { (peak) "/min" }
        }
        table {
            caption { "Deliveries in the last hour, per source" }
            thead { tr { th scope="col" { "Source" } th scope="col" { "Colour" } th scope="col" { "Deliveries" } th scope="col" { "Busiest minute" } } }
            tbody { @for (n, (provider, counts)) in per.iter().enumerate() {
                tr {
                    td { (provider) }
                    td { svg width="14" height="14" aria-hidden="true" { rect width="14" height="14" fill=(COLOURS[n % COLOURS.len()]) {} } }
                    td { (counts.iter().sum::<i64>()) }
                    td { (counts.iter().max().copied().unwrap_or(0)) }
                }
            } }
        }
    }
}

fn answers(gateway: &[Sample]) -> Markup {
    let by = prom::sum_by(gateway, "callstream_gateway_requests_total", "outcome");
    if by.is_empty() {
        return html! { p { "The gateway's metrics are not configured or not reachable (console.metrics.gateway)." } };
    }
    html! {
        table {
            thead { tr { th scope="col" { "Outcome" } th scope="col" { "Requests" } } }
            tbody { @for (outcome, n) in &by { tr { td { (outcome) } td { (n) } } } }
        }
    }
}

fn spool(gateway: &[Sample]) -> Markup {
    let bytes = prom::total(gateway, "callstream_gateway_spool_bytes");
    let records = prom::total(gateway, "callstream_gateway_spool_records");
    let oldest = prom::total(gateway, "callstream_gateway_spool_oldest_age_seconds");
    let degraded = prom::total(gateway, "callstream_gateway_kafka_degraded");
    html! {
        @if bytes.is_none() && records.is_none() {
            p { "No spool figures (the gateway's metrics are not configured, or its spool is disabled)." }
        } @else {
            div class="cards" {
                div class="card" { div { "Bytes waiting" } div class="n" { (bytes.unwrap_or(0.0)) } }
                div class="card" { div { "Deliveries waiting" } div class="n" { (records.unwrap_or(0.0)) } }
                div class="card" { div { "Oldest (seconds)" } div class="n" { (oldest.unwrap_or(0.0)) } }
                div class="card" { div { "Kafka" } div class="n" {
                    @if degraded.unwrap_or(0.0) > 0.0 { span class="bad" { "degraded" } } @else { span class="ok" { "ok" } } } }
            }
        }
    }
}

fn lag(scraped: &[(String, Result<Vec<Sample>, String>)]) -> Markup {
    html! {
        @if scraped.is_empty() {
            p { "No binaries configured: set console.metrics.<name> to each one's /metrics URL." }
        } @else {
            table {
                thead { tr { th scope="col" { "Binary" } th scope="col" { "Metric" } th scope="col" { "Labels" } th scope="col" { "Records behind" } } }
                tbody { @for (name, samples) in scraped {
                    @match samples {
                        Err(e) => tr { td { (name) } td colspan="3" class="bad" { "unreachable: " (e) } },
                        Ok(samples) => {
                            @let lags: Vec<&Sample> = samples.iter().filter(|s| s.name.ends_with("_lag_records")).collect();
                            @if lags.is_empty() { tr { td { (name) } td colspan="3" { "no lag (not a consumer)" } } }
                            @for s in lags {
                                tr {
                                    td { (name) } td { code { (s.name) } }
                                    td { (s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
                                    td { (s.value) }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

async fn recent_letters(shared: &Shared, now: DateTime<Utc>) -> Markup {
    let since = now - Duration::hours(1);
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for kind in [Topic::Dlq, Topic::CrmDlq, Topic::RecordingsDlq] {
        let topic = shared.settings.topics.name(kind).to_string();
        match kafka::between(&shared.settings.kafka, &topic, since, now, 100_000, |_| {
            true
        })
        .await
        {
            Ok((records, _)) => {
                for r in &records {
                    let reason = shown(kind, r).reason;
                    *counts.entry((topic.clone(), reason)).or_default() += 1;
                }
            }
            Err(e) => errors.push(format!("{topic}: {e}")),
        }
    }
    html! {
        @for e in &errors { p class="bad" role="alert" { "Cannot read " (e) } }
        @if counts.is_empty() { p { "None." } } @else {
            table {
                thead { tr { th scope="col" { "Topic" } th scope="col" { "Reason" } th scope="col" { "Letters" } } }
                tbody { @for ((topic, reason), n) in &counts { tr { td { code { (topic) } } td class="reason" { (reason) } td { (n) } } } }
            }
        }
    }
}
