//! `/dead-letters`: the gateway's DLQ, the CRM DLQ and the recordings DLQ,
//! newest first, and the redeliver action (dry run first) for the first
//! two, through the replay library: a gateway letter is re-normalized from
//! its raw request with today's code and configuration
//! ([`callstream_consumers::replay::run`] over that one record), a CRM
//! letter is sent again to its target
//! ([`callstream_consumers::crm::redeliver::redeliver`]). Every action is
//! recorded ([`crate::audit`]) before its answer is shown.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use callstream_consumers::crm::redeliver::{redeliver as crm_redeliver, RedeliverOptions};
use callstream_consumers::replay::range::Bound;
use callstream_consumers::replay::report::Verdict;
use callstream_consumers::replay::{self, ReplayOptions, Source};
use callstream_schemas::raw as h;
use callstream_schemas::Topic;

use crate::kafka::{self, Record};
use crate::{audit, Shared};

/// The three dead-letter topics: (topic, section id, heading, redeliverable).
fn topics(shared: &Shared) -> [(Topic, String, &'static str, &'static str, bool); 3] {
    let name = |t| shared.settings.topics.name(t).to_string();
    [
        (
            Topic::Dlq,
            name(Topic::Dlq),
            "dlq",
            "Gateway: deliveries that did not normalize",
            true,
        ),
        (
            Topic::CrmDlq,
            name(Topic::CrmDlq),
            "crm-dlq",
            "CRM: deliveries a target refused",
            true,
        ),
        (
            Topic::RecordingsDlq,
            name(Topic::RecordingsDlq),
            "recordings-dlq",
            "Recordings: files that could not be archived",
            false,
        ),
    ]
}

/// What a page shows of one letter.
pub(crate) struct Shown {
    pub reason: String,
    pub detail: String,
    pub source: String,
    pub time: String,
}

pub(crate) fn shown(kind: Topic, r: &Record) -> Shown {
    let time = r
        .header(h::H_RECEIVED_AT)
        .map(str::to_string)
        .or_else(|| r.timestamp.map(|t| t.to_rfc3339()))
        .unwrap_or_default();
    let event: Option<serde_json::Value> = serde_json::from_slice(&r.payload).ok();
    let provider = || {
        event
            .as_ref()
            .and_then(|e| e["provider"].as_str())
            .unwrap_or("")
            .to_string()
    };
    match kind {
        Topic::Dlq => Shown {
            reason: r.header(h::H_DLQ_REASON).unwrap_or("").to_string(),
            detail: r.header(h::H_DLQ_DETAIL).unwrap_or("").to_string(),
            source: r.header(h::H_SOURCE).unwrap_or("").to_string(),
            time,
        },
        Topic::CrmDlq => Shown {
            reason: format!(
                "crm target {} gave up after {} attempts",
                r.header(h::H_CRM_TARGET).unwrap_or("?"),
                r.header(h::H_CRM_ATTEMPTS).unwrap_or("?")
            ),
            detail: r.header(h::H_CRM_ERROR).unwrap_or("").to_string(),
            source: provider(),
            time,
        },
        _ => Shown {
            reason: format!(
                "archiving gave up after {} attempts",
                r.header(h::H_RECORDINGS_ATTEMPTS).unwrap_or("?")
            ),
            detail: r.header(h::H_RECORDINGS_ERROR).unwrap_or("").to_string(),
            source: provider(),
            time,
        },
    }
}

pub async fn list(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let user = super::user(&req);
    let csrf = shared.auth.csrf_token(&user);
    let shown_per_topic = shared.settings.console.dead_letters_shown;
    let mut sections = Vec::new();
    for (kind, topic, id, heading, redeliverable) in topics(&shared) {
        let letters = kafka::newest(&shared.settings.kafka, &topic, shown_per_topic).await;
        sections.push(html! {
            section id=(id) aria-labelledby={(id) "-h"} {
                h2 id={(id) "-h"} { (heading) " " small { code { (topic) } } }
                @match &letters {
                    Err(e) => p class="bad" role="alert" { "Cannot read " (topic) ": " (e) },
                    Ok(letters) if letters.is_empty() => p { "None." },
                    Ok(letters) => (table(kind, letters, redeliverable, &csrf)),
                }
            }
        });
    }
    let body = html! {
        p { "The newest " (shown_per_topic) " letters of each partition, newest first. "
            "A dry run shows what a redelivery would publish or send; nothing changes until you press Redeliver." }
        @for s in &sections { (s) }
    };
    super::html(crate::html::page(
        "Dead letters",
        &user,
        "/dead-letters",
        body,
    ))
}

fn table(kind: Topic, letters: &[Record], redeliverable: bool, csrf: &str) -> Markup {
    html! {
        table {
            thead { tr {
                th scope="col" { "Time" } th scope="col" { "Source" } th scope="col" { "Reason" }
                th scope="col" { "Detail" } th scope="col" { "Letter" } th scope="col" { "Body" }
                @if redeliverable { th scope="col" { "Action" } }
            } }
            tbody {
                @for r in letters {
                    @let s = shown(kind, r);
                    tr data-letter=(r.address()) {
                        td { (s.time) }
                        td class="source" { (s.source) }
                        td class="reason" { (s.reason) }
                        td class="detail" { (s.detail) }
                        td { code { (r.partition) ":" (r.offset) } }
                        td { details { summary { "Body" } pre { (crate::html::body_text(&r.payload)) } } }
                        @if redeliverable {
                            td { (action_form(&r.address(), csrf, "dry-run", "Dry run")) }
                        }
                    }
                }
            }
        }
    }
}

fn action_form(letter: &str, csrf: &str, mode: &str, label: &str) -> Markup {
    html! {
        form class="inline" method="post" action="/dead-letters/redeliver" {
            input type="hidden" name="letter" value=(letter);
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" name="mode" value=(mode) aria-label={(label) " " (letter)} { (label) }
        }
    }
}

#[derive(Deserialize)]
pub struct RedeliverForm {
    letter: String,
    mode: String,
    csrf: String,
}

/// What a run did, for the page and the audit row.
struct Ran {
    /// ok, failed, unchanged, ...
    outcome: String,
    /// One line per record or letter.
    lines: Vec<String>,
    /// The run's report.
    report: String,
    /// Event identities published or (dry run) that would be.
    events: Vec<String>,
}

pub async fn redeliver(
    req: HttpRequest,
    shared: web::Data<Shared>,
    form: web::Form<RedeliverForm>,
) -> HttpResponse {
    let user = super::user(&req);
    let title = "Redeliver";
    if !shared.auth.csrf_ok(&user, &form.csrf) {
        return super::error_page(
            StatusCode::FORBIDDEN,
            &user,
            title,
            "The form's CSRF token is missing or wrong: reload the dead-letters page and try again.",
        );
    }
    let dry_run = match form.mode.as_str() {
        "dry-run" => true,
        "send" => false,
        other => {
            return super::error_page(
                StatusCode::BAD_REQUEST,
                &user,
                title,
                &format!("unknown mode `{other}` (dry-run or send)"),
            )
        }
    };
    let Some((topic, partition, offset)) = parse_letter(&form.letter) else {
        return super::error_page(
            StatusCode::BAD_REQUEST,
            &user,
            title,
            "a letter is `<topic>:<partition>:<offset>`",
        );
    };
    let kind = topics(&shared)
        .into_iter()
        .find(|(_, name, ..)| *name == topic)
        .filter(|t| t.4)
        .map(|t| t.0);
    let ran = match kind {
        Some(Topic::Dlq) => replay_one(&shared, partition, offset, dry_run).await,
        Some(Topic::CrmDlq) => resend_one(&shared, &topic, partition, offset, dry_run).await,
        _ => Err(format!(
            "`{topic}` is not a topic the console redelivers from (the gateway's DLQ or the CRM DLQ)"
        )),
    };
    let action = if dry_run { "dry-run" } else { "redeliver" };
    let (outcome, detail) = match &ran {
        Ok(r) => (
            r.outcome.clone(),
            json!({"lines": r.lines, "events": r.events, "report": r.report}),
        ),
        Err(e) => ("failed".to_string(), json!({"error": e})),
    };
    if let Err(e) = audit::record(&shared.db, &user, action, &form.letter, &outcome, &detail).await
    {
        return super::error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            &user,
            title,
            &format!("The action could not be recorded (PostgreSQL: {e}); its result is not shown. Dry runs change nothing; a redelivery may have been published: check /events."),
        );
    }
    let csrf = shared.auth.csrf_token(&user);
    let body = html! {
        section id="result" aria-live="polite" {
            h2 { @if dry_run { "Dry run" } @else { "Redelivery" } " of " code { (form.letter) } }
            @match &ran {
                Err(e) => p class="bad" role="alert" { "Failed: " (e) },
                Ok(r) => {
                    @if dry_run {
                        p { "Dry run: nothing was published or sent. Outcome: " strong { (r.outcome) } "." }
                        @for e in &r.events { p { "It would publish event " code { (e) } "." } }
                    } @else if r.outcome == "ok" {
                        p class="ok" { "Published. " a href="/actions" { "See the action" } "." }
                        @for e in &r.events { p { "Published event " code { (e) } "." } }
                    } @else {
                        p class="bad" { "Not published: " (r.outcome) ". " a href="/actions" { "See the action" } "." }
                    }
                    ul { @for l in &r.lines { li { code { (l) } } } }
                    details { summary { "The run's report" } pre { (r.report) } }
                    @if dry_run && r.outcome == "ok" {
                        p { "Redeliver it now?" }
                        (action_form(&form.letter, &csrf, "send", "Redeliver"))
                    }
                }
            }
            p { a href="/dead-letters" { "Back to the dead letters" } }
        }
    };
    super::html(crate::html::page(title, &user, "/dead-letters", body))
}

/// `<topic>:<partition>:<offset>`; the topic may itself hold colons.
fn parse_letter(s: &str) -> Option<(String, i32, i64)> {
    let (rest, offset) = s.rsplit_once(':')?;
    let (topic, partition) = rest.rsplit_once(':')?;
    let (partition, offset) = (partition.parse().ok()?, offset.parse().ok()?);
    (!topic.is_empty() && partition >= 0 && offset >= 0)
        .then(|| (topic.to_string(), partition, offset))
}

fn one(partition: i32, offset: i64) -> (Bound, Bound) {
    (
        Bound::Offsets(BTreeMap::from([(partition, offset)])),
        Bound::Offsets(BTreeMap::from([(partition, offset + 1)])),
    )
}

/// A gateway letter: the replay of that one DLQ record.
async fn replay_one(
    shared: &Shared,
    partition: i32,
    offset: i64,
    dry_run: bool,
) -> Result<Ran, String> {
    let (from, to) = one(partition, offset);
    let options = ReplayOptions {
        source: Source::Dlq,
        from: Some(from),
        to: Some(to),
        dry_run,
        tenants: BTreeMap::new(),
        gateway_config: shared.settings.console.gateway_config.clone(),
    };
    let mut lines = Vec::new();
    let mut events = Vec::new();
    let mut failing = None;
    let report = replay::run(
        &shared.settings.kafka,
        &shared.settings.topics,
        &options,
        |o| {
            lines.push(o.to_string());
            match &o.verdict {
                Verdict::New(d)
                | Verdict::Unverified(d)
                | Verdict::Unchanged(d)
                | Verdict::Updated { event: d, .. }
                | Verdict::Reidentified { event: d, .. } => events.push(d.identity.clone()),
                Verdict::StillFailing(f) | Verdict::Regressed { failure: f, .. } => {
                    failing = Some(format!("still fails: {} ({})", f.reason, f.detail))
                }
            }
        },
    )
    .await
    .map_err(|e| format!("{e}: {}", error_chain(&e)))?;
    if report.read == 0 {
        return Err(format!("no record at {partition}:{offset}"));
    }
    let outcome = match failing {
        Some(f) => f,
        None if dry_run || report.published as usize == events.len() => "ok".to_string(),
        None => format!("{} of {} published", report.published, events.len()),
    };
    Ok(Ran {
        outcome,
        lines,
        report: report.to_string(),
        events,
    })
}

/// A CRM letter: sent again to the target it names.
async fn resend_one(
    shared: &Shared,
    topic: &str,
    partition: i32,
    offset: i64,
    dry_run: bool,
) -> Result<Ran, String> {
    let letter = kafka::at(&shared.settings.kafka, topic, partition, offset)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no record at {partition}:{offset}"))?;
    let target = letter
        .header(h::H_CRM_TARGET)
        .ok_or("the letter names no CRM target")?
        .to_string();
    let (from, to) = one(partition, offset);
    let options = RedeliverOptions {
        target,
        from: Some(from),
        to: Some(to),
        dry_run,
    };
    // Never stopped from outside: a single letter ends by itself.
    let (_keep, never) = tokio::sync::watch::channel(false);
    let mut lines = Vec::new();
    let mut events = Vec::new();
    let s = &shared.settings;
    let report = crm_redeliver(
        &s.crm,
        &s.kafka,
        &s.topics,
        s.database_url.as_ref(),
        &options,
        never,
        |l| {
            lines.push(l.to_string());
            events.extend(l.event_id.clone());
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let outcome = if report.failed > 0 {
        "failed again".to_string()
    } else if report.undecodable > 0 {
        "undecodable".to_string()
    } else if report.skipped > 0 {
        "skipped (kind not delivered)".to_string()
    } else {
        "ok".to_string()
    };
    Ok(Ran {
        outcome,
        lines,
        report: format!("{report:?}"),
        events,
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        out.push(s.to_string());
        source = s.source();
    }
    out.join(": ")
}

#[cfg(test)]
mod tests {
    use super::parse_letter;

    #[test]
    fn letters_name_topic_partition_and_offset() {
        assert_eq!(
            parse_letter("callstream.dlq.v1:2:41"),
            Some(("callstream.dlq.v1".into(), 2, 41))
        );
        assert_eq!(parse_letter("a:b:1:2"), Some(("a:b".into(), 1, 2)));
        assert_eq!(parse_letter("t:-1:2"), None);
        assert_eq!(parse_letter(":1:2"), None);
        assert_eq!(parse_letter("t:1"), None);
    }
}
