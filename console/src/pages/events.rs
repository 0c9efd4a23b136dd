//! `/events?q=`: search the store's `events` (and `calls`) by phone number
//! in any format, call id, identity, agent, tenant, provider and time; and
//! one event with its raw delivery and its revisions.
//!
//! A number matches by its digits: whatever the provider sent (`+33 6 12
//! 34 56 78`, `0033612345678`, `33612345678`) and whatever is typed (`06 12
//! 34 56 78`), the typed digits without leading zeros must end the stored
//! digits. That reads every row of the range searched (no index serves
//! it); the time range bounds it.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use tokio_postgres::types::ToSql;

use callstream_schemas::raw::H_REQUEST_ID;
use callstream_schemas::Topic;

use crate::kafka;
use crate::Shared;

/// Rows shown per table.
const LIMIT: i64 = 100;
/// Records read, at most, to find a raw delivery or an event's revisions.
const SCAN_CAP: u64 = 500_000;
/// How far from an event's `received_at` its raw record is looked for: the
/// gateway publishes both together, or drains them from its spool together.
const RAW_MARGIN_MINUTES: i64 = 10;

const PROVIDERS: [&str; 6] = ["onoff", "xarios", "telecmi", "twilio", "aircall", "telnyx"];

#[derive(Debug, Default, Deserialize)]
pub struct Query {
    #[serde(default)]
    q: String,
    #[serde(default)]
    provider: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// The digits a number search compares, or `None` when `q` is not a number.
pub(crate) fn number_digits(q: &str) -> Option<String> {
    let phone_like = q
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().\u{a0}/".contains(c));
    let digits: String = q.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0');
    (phone_like && significant.len() >= 6).then(|| significant.to_string())
}

/// `2026-12-03T05:30` (a `datetime-local` field, taken as UTC) or RFC 3339.
fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|n| n.and_utc())
}

/// `%`, `_` and `\` taken literally in a LIKE pattern.
fn like_literal(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A WHERE clause and its parameters, built one condition at a time.
#[derive(Default)]
struct Where {
    conditions: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Where {
    /// The next parameter's placeholder, holding `value`.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn sql(&self) -> String {
        if self.conditions.is_empty() {
            "TRUE".into()
        } else {
            self.conditions.join(" AND ")
        }
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The conditions of a search over `events` (`calls == false`) or `calls`.
fn conditions(query: &Query, calls: bool) -> Where {
    let mut w = Where::default();
    let q = query.q.trim();
    if let Some(digits) = number_digits(q) {
        let p = w.param(format!("%{}", like_literal(&digits)));
        w.conditions.push(format!(
            "(regexp_replace(coalesce(external_number, ''), '\\D', '', 'g') LIKE {p} \
              OR regexp_replace(coalesce(user_number, ''), '\\D', '', 'g') LIKE {p})"
        ));
    } else if !q.is_empty() {
        let exact = w.param(q.to_string());
        let like = w.param(format!("%{}%", like_literal(q)));
        let ids = if calls {
            format!("call_key = {exact} OR call_key LIKE '%:' || {exact}")
        } else {
            format!(
                "identity = {exact} OR call_id = {exact} OR call_key = {exact} \
                 OR event_id::text = {exact}"
            )
        };
        w.conditions.push(format!(
            "({ids} OR user_id = {exact} OR user_email ILIKE {like} OR user_name ILIKE {like} \
              OR external_name ILIKE {like} OR tenant = {exact})"
        ));
    }
    if !query.provider.trim().is_empty() {
        let p = w.param(query.provider.trim().to_string());
        w.conditions.push(format!("provider = {p}"));
    }
    if !query.tenant.trim().is_empty() {
        let p = w.param(query.tenant.trim().to_string());
        w.conditions.push(format!("tenant = {p}"));
    }
    let at = if calls {
        "coalesce(started_at, updated_at)"
    } else {
        "coalesce(started_at, received_at)"
    };
    if let Some(from) = parse_time(&query.from) {
        let p = w.param(from);
        w.conditions.push(format!("{at} >= {p}"));
    }
    if let Some(to) = parse_time(&query.to) {
        let p = w.param(to);
        w.conditions.push(format!("{at} < {p}"));
    }
    w
}

fn search_form(query: &Query) -> Markup {
    html! {
        form role="search" method="get" action="/events" {
            fieldset {
                legend { "Search events and calls" }
                label for="q" { "Number, call id, agent or text" }
                input id="q" name="q" type="search" value=(query.q) size="32";
                label for="provider" { "Provider" }
                select id="provider" name="provider" {
                    option value="" selected[query.provider.is_empty()] { "any" }
                    @for p in PROVIDERS {
                        option value=(p) selected[query.provider == p] { (p) }
                    }
                }
                label for="tenant" { "Tenant" }
                input id="tenant" name="tenant" type="text" value=(query.tenant) size="12";
                label for="from" { "From (UTC)" }
                input id="from" name="from" type="datetime-local" value=(query.from);
                label for="to" { "To (UTC)" }
                input id="to" name="to" type="datetime-local" value=(query.to);
                button type="submit" { "Search" }
            }
        }
    }
}

fn at(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub async fn search(
    req: HttpRequest,
    shared: web::Data<Shared>,
    query: web::Query<Query>,
) -> HttpResponse {
    let user = super::user(&req);
    let query = query.into_inner();
    let searched = !(query.q.trim().is_empty()
        && query.provider.is_empty()
        && query.tenant.is_empty()
        && query.from.is_empty()
        && query.to.is_empty());
    let w = conditions(&query, false);
    let events = shared
        .db
        .query(
            &format!(
                "SELECT event_id, provider, tenant, kind, direction, status, \
                 coalesce(started_at, received_at), user_name, user_email, external_number, \
                 call_key, revision FROM events WHERE {} \
                 ORDER BY coalesce(started_at, received_at) DESC LIMIT {LIMIT}",
                w.sql()
            ),
            &w.refs(),
        )
        .await;
    let c = conditions(&query, true);
    let calls = shared
        .db
        .query(
            &format!(
                "SELECT call_key, provider, status, direction, started_at, user_name, \
                 external_number, revision FROM calls WHERE {} \
                 ORDER BY coalesce(started_at, updated_at) DESC LIMIT {LIMIT}",
                c.sql()
            ),
            &c.refs(),
        )
        .await;
    let (events, calls) = match (events, calls) {
        (Ok(e), Ok(c)) => (e, c),
        (Err(e), _) | (_, Err(e)) => {
            return super::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Events",
                &format!("PostgreSQL: {e}"),
            )
        }
    };
    let body = html! {
        (search_form(&query))
        @if searched && events.is_empty() && calls.is_empty() {
            p id="no-results" role="status" { "No event or call matches." }
        } @else {
            p role="status" { (events.len()) " events, " (calls.len()) " calls"
                @if events.len() as i64 == LIMIT { " (the newest " (LIMIT) "; narrow the search)" } "." }
        }
        @if !calls.is_empty() {
            table id="calls" {
                caption { "Calls" }
                thead { tr { th scope="col" { "Call" } th scope="col" { "Started" } th scope="col" { "Provider" }
                    th scope="col" { "Direction" } th scope="col" { "Status" } th scope="col" { "Agent" }
                    th scope="col" { "Number" } th scope="col" { "Revision" } } }
                tbody { @for r in &calls {
                    @let key: String = r.get(0);
                    tr {
                        td { a href={"/calls/" (urlencode(&key))} { (key) } }
                        td { (at(r.get(4))) }
                        td { (r.get::<_, String>(1)) }
                        td { (r.get::<_, String>(3)) }
                        td { (r.get::<_, String>(2)) }
                        td { (r.get::<_, Option<String>>(5).unwrap_or_default()) }
                        td class="number" { (r.get::<_, Option<String>>(6).unwrap_or_default()) }
                        td { (r.get::<_, i64>(7)) }
                    }
                } }
            }
        }
        @if !events.is_empty() {
            table id="events" {
                caption { "Events" }
                thead { tr { th scope="col" { "Event" } th scope="col" { "Time" } th scope="col" { "Provider" }
                    th scope="col" { "Tenant" } th scope="col" { "Kind" } th scope="col" { "Direction" }
                    th scope="col" { "Status" } th scope="col" { "Agent" } th scope="col" { "Number" }
                    th scope="col" { "Call" } th scope="col" { "Revision" } } }
                tbody { @for r in &events {
                    @let id: uuid::Uuid = r.get(0);
                    @let key: Option<String> = r.get(10);
                    tr {
                        td { a href={"/events/" (id)} { (id) } }
                        td { (at(r.get(6))) }
                        td { (r.get::<_, String>(1)) }
                        td { (r.get::<_, String>(2)) }
                        td { (r.get::<_, String>(3)) }
                        td { (r.get::<_, String>(4)) }
                        td { (r.get::<_, String>(5)) }
                        td { (r.get::<_, Option<String>>(7).or(r.get::<_, Option<String>>(8)).unwrap_or_default()) }
                        td class="number" { (r.get::<_, Option<String>>(9).unwrap_or_default()) }
                        td { @if let Some(k) = &key { a href={"/calls/" (urlencode(k))} { "call" } } }
                        td { (r.get::<_, i32>(11)) }
                    }
                } }
            }
        }
    };
    super::html(crate::html::page("Events", &user, "/events", body))
}

pub(crate) fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// An event's row in the store.
struct Stored {
    identity: String,
    received_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    call_key: Option<String>,
    event: serde_json::Value,
    revision: i32,
}

/// The stored event `id`, or the page to answer instead: 404 when there
/// is none, 503 when PostgreSQL cannot say. `title` names that page.
async fn load(shared: &Shared, id: &str, user: &str, title: &str) -> Result<Stored, HttpResponse> {
    let not_found = || {
        super::error_page(
            StatusCode::NOT_FOUND,
            user,
            title,
            "No such event in the store.",
        )
    };
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Err(not_found());
    };
    let row = shared
        .db
        .query_opt(
            "SELECT identity, received_at, started_at, call_key, event, revision \
             FROM events WHERE event_id = $1",
            &[&id],
        )
        .await
        .map_err(|e| {
            let e = format!("PostgreSQL: {e}");
            super::error_page(StatusCode::SERVICE_UNAVAILABLE, user, title, &e)
        })?
        .ok_or_else(not_found)?;
    Ok(Stored {
        identity: row.get(0),
        received_at: row.get(1),
        started_at: row.get(2),
        call_key: row.get(3),
        event: row.get(4),
        revision: row.get(5),
    })
}

pub async fn detail(
    req: HttpRequest,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> HttpResponse {
    let user = super::user(&req);
    let Stored {
        identity,
        received_at,
        call_key,
        event,
        revision,
        ..
    } = match load(&shared, &id, &user, "Event").await {
        Ok(stored) => stored,
        Err(page) => return page,
    };
    let body = html! {
        dl {
            dt { "Identity" } dd { code { (identity) } }
            dt { "Revision" } dd { (revision) }
            dt { "Received" } dd { (received_at.to_rfc3339()) }
            @if let Some(k) = &call_key { dt { "Call" } dd { a href={"/calls/" (urlencode(k))} { (k) } } }
        }
        p {
            a href={"/events/" (id) "/raw"} { "Raw delivery" } " · "
            a href={"/events/" (id) "/revisions"} { "Revisions" }
        }
        h2 { "The event as stored" }
        pre { (crate::html::pretty(&event)) }
    };
    super::html(crate::html::page("Event", &user, "/events", body))
}

pub async fn raw(
    req: HttpRequest,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> HttpResponse {
    let user = super::user(&req);
    let Stored {
        received_at, event, ..
    } = match load(&shared, &id, &user, "Raw delivery").await {
        Ok(stored) => stored,
        Err(page) => return page,
    };
    let Some(request_id) = event["raw"]["request_id"].as_str().map(str::to_string) else {
        return super::error_page(
            StatusCode::NOT_FOUND,
            &user,
            "Raw delivery",
            "The event names no raw record.",
        );
    };
    let topic = shared.settings.topics.name(Topic::Raw).to_string();
    let margin = Duration::minutes(RAW_MARGIN_MINUTES);
    let found = kafka::between(
        &shared.settings.kafka,
        &topic,
        received_at - margin,
        received_at + margin,
        SCAN_CAP,
        |m| kafka::header(m, H_REQUEST_ID) == Some(request_id.as_str()),
    )
    .await;
    let body = match found {
        Err(e) => html! { p class="bad" role="alert" { "Cannot read " (topic) ": " (e) } },
        Ok((records, _)) if records.is_empty() => html! {
            p { "No record of " code { (topic) } " with request id " code { (request_id) }
                " within " (RAW_MARGIN_MINUTES) " minutes of the event's receipt (deleted by retention?)." }
        },
        Ok((records, _)) => html! {
            @for r in &records {
                p { "Request " code { (request_id) } ", record " code { (r.address()) } ". "
                    "Credentials are never recorded: the gateway copies no Authorization or key header." }
                table {
                    caption { "Headers as recorded" }
                    thead { tr { th scope="col" { "Header" } th scope="col" { "Value" } } }
                    tbody { @for (k, v) in &r.headers { tr { td { code { (k) } } td { (v) } } } }
                }
                h2 { "Body as received" }
                pre { (String::from_utf8_lossy(&r.payload)) }
            }
        },
    };
    let body = html! { p { a href={"/events/" (id)} { "Back to the event" } } (body) };
    super::html(crate::html::page("Raw delivery", &user, "/events", body))
}

pub async fn revisions(
    req: HttpRequest,
    shared: web::Data<Shared>,
    id: web::Path<String>,
) -> HttpResponse {
    let user = super::user(&req);
    let Stored {
        identity,
        received_at,
        started_at,
        ..
    } = match load(&shared, &id, &user, "Revisions").await {
        Ok(stored) => stored,
        Err(page) => return page,
    };
    // The first revision came after the call started (or, without a start,
    // up to a day before this one); updates can come any time after.
    let from = started_at.unwrap_or(received_at - Duration::days(1)) - Duration::hours(1);
    let topic = shared.settings.topics.name(Topic::EventsUnique).to_string();
    let found = kafka::between(
        &shared.settings.kafka,
        &topic,
        from,
        Utc::now(),
        SCAN_CAP,
        |m| rdkafka::Message::key(m) == Some(identity.as_bytes()),
    )
    .await;
    let body = match found {
        Err(e) => html! { p class="bad" role="alert" { "Cannot read " (topic) ": " (e) } },
        Ok((records, truncated)) => html! {
            p { "Each revision dedup forwarded to " code { (topic) } " since " (from.to_rfc3339()) "."
                @if truncated { strong { " The search stopped after " (SCAN_CAP) " records." } } }
            table id="revisions" {
                thead { tr { th scope="col" { "Revision" } th scope="col" { "Received" } th scope="col" { "Status" }
                    th scope="col" { "Fingerprint" } th scope="col" { "Record" } th scope="col" { "Event" } } }
                tbody { @for r in &records {
                    @let e: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
                    tr {
                        td { (r.header("cs_revision").unwrap_or("?")) }
                        td { (e["received_at"].as_str().unwrap_or("")) }
                        td { (e["status"].as_str().unwrap_or("")) }
                        td { code { (e["fingerprint"].as_str().unwrap_or("").get(..12).unwrap_or("")) } }
                        td { code { (r.address()) } }
                        td { details { summary { "Event" } pre { (crate::html::pretty(&e)) } } }
                    }
                } }
            }
        },
    };
    let body = html! { p { a href={"/events/" (id)} { "Back to the event" } } (body) };
    super::html(crate::html::page("Revisions", &user, "/events", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule the SQL applies: the stored number's digits end with the
    /// typed number's significant digits.
    fn finds(typed: &str, stored: &str) -> bool {
        let stored: String = stored.chars().filter(char::is_ascii_digit).collect();
        stored.ends_with(&number_digits(typed).unwrap())
    }

    #[test]
    fn a_number_in_any_format_searches_by_its_significant_digits() {
        // Typed as a person dials it at home: every way a provider stores it.
        for typed in ["06 12 34 56 78", "(0)6-12.34.56.78", "612345678"] {
            for stored in [
                "+33612345678",
                "33612345678",
                "0612345678",
                "+33 6 12 34 56 78",
            ] {
                assert!(finds(typed, stored), "{typed} should find {stored}");
            }
        }
        // Typed with its country code: the international forms.
        for typed in ["+33 6 12 34 56 78", "0033612345678"] {
            assert!(finds(typed, "+33612345678"));
            assert!(finds(typed, "33612345678"));
        }
        assert!(!finds("06 12 34 56 79", "+33612345678"));
        assert_eq!(number_digits("call-123456"), None, "text is not a number");
        assert_eq!(number_digits("12345"), None, "too short to mean a number");
    }

    #[test]
    fn text_searches_exact_ids_and_escaped_patterns() {
        let w = conditions(
            &Query {
                q: "50%_off".into(),
                provider: "onoff".into(),
                from: "2026-12-03T05:30".into(),
                ..Query::default()
            },
            false,
        );
        assert_eq!(w.params.len(), 4, "q exact, q pattern, provider, from");
        assert!(w.sql().contains("identity = $1"));
        assert!(w.sql().contains("provider = $3"));
        assert!(w.sql().contains(">= $4"));
        assert_eq!(like_literal("50%_off"), "50\\%\\_off");
        assert_eq!(
            parse_time("2026-12-03T05:30").unwrap().to_rfc3339(),
            "2026-12-03T05:30:00+00:00"
        );
    }
}
