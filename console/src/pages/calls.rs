//! `/calls/<key>`: one call as the store merged it (`calls`): its status
//! timeline, its events, legs, recordings and voicemail.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use maud::html;

use crate::Shared;

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn page(
    req: HttpRequest,
    shared: web::Data<Shared>,
    key: web::Path<String>,
) -> HttpResponse {
    let user = super::user(&req);
    let key = key.into_inner();
    let call = shared
        .db
        .query_opt(
            "SELECT revision, status, direction, started_at, ended_at, call FROM calls WHERE call_key = $1",
            &[&key],
        )
        .await;
    let events = shared
        .db
        .query(
            "SELECT event_id, identity, kind, status, received_at, revision FROM events \
             WHERE call_key = $1 ORDER BY received_at",
            &[&key],
        )
        .await;
    let (call, events) = match (call, events) {
        (Ok(Some(c)), Ok(e)) => (c, e),
        (Ok(None), _) => {
            return super::error_page(
                StatusCode::NOT_FOUND,
                &user,
                "Call",
                "No such call in the store.",
            )
        }
        (Err(e), _) | (_, Err(e)) => {
            return super::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Call",
                &format!("PostgreSQL: {e}"),
            )
        }
    };
    let merged: serde_json::Value = call.get(5);
    let started: Option<DateTime<Utc>> = call.get(3);
    let ended: Option<DateTime<Utc>> = call.get(4);
    let empty = Vec::new();
    let list = |name: &str| merged[name].as_array().unwrap_or(&empty).clone();
    let body = html! {
        dl {
            dt { "Call" } dd { code { (key) } }
            dt { "Status" } dd { (call.get::<_, String>(1)) }
            dt { "Direction" } dd { (call.get::<_, String>(2)) }
            dt { "Started" } dd { (started.map(|t| t.to_rfc3339()).unwrap_or_default()) }
            dt { "Ended" } dd { (ended.map(|t| t.to_rfc3339()).unwrap_or_default()) }
            dt { "Agent" } dd { (text(&merged["internal"]["name"])) " " (text(&merged["internal"]["email"])) }
            dt { "Customer" } dd { (text(&merged["external"]["number"])) " " (text(&merged["external"]["name"])) }
            dt { "Revision" } dd { (call.get::<_, i64>(0)) }
        }
        h2 { "Timeline" }
        table id="timeline" {
            thead { tr { th scope="col" { "Received" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Provider event" } } }
            tbody { @for s in list("timeline") {
                tr { td { (text(&s["received_at"])) } td { (text(&s["kind"])) } td { (text(&s["status"])) } td { (text(&s["provider_event_type"])) } }
            } }
        }
        h2 { "Events" }
        table id="call-events" {
            thead { tr { th scope="col" { "Event" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Received" } th scope="col" { "Revision" } } }
            tbody { @for e in &events {
                @let id: uuid::Uuid = e.get(0);
                tr {
                    td { a href={"/events/" (id)} { (e.get::<_, String>(1)) } }
                    td { (e.get::<_, String>(2)) }
                    td { (e.get::<_, String>(3)) }
                    td { (e.get::<_, DateTime<Utc>>(4).to_rfc3339()) }
                    td { (e.get::<_, i32>(5)) }
                }
            } }
        }
        h2 { "Legs" }
        @if list("legs").is_empty() { p { "One leg." } } @else {
            ul { @for l in list("legs") { li { code { (text(&l["leg_id"])) } " " (text(&l["leg"])) } } }
        }
        h2 { "Recordings and voicemail" }
        ul {
            @for r in list("recordings") { li { "Recording: " (media(&r)) } }
            @if !merged["voicemail"].is_null() { li { "Voicemail: " (media(&merged["voicemail"])) } }
        }
        h2 { "The merged call" }
        details { summary { "JSON" } pre { (crate::html::pretty(&merged)) } }
    };
    super::html(crate::html::page("Call", &user, "/events", body))
}

fn media(m: &serde_json::Value) -> maud::Markup {
    let url = text(&m["url"]);
    html! {
        @if url.starts_with("https://") || url.starts_with("http://") {
            a href=(url) rel="noreferrer noopener" { "open" }
        }
        " " (text(&m["file_name"]))
        @if let Some(d) = m["duration_seconds"].as_f64() { " (" (d) " s)" }
    }
}
