//! The pages. Each module is one page (or one page and its actions).

pub mod actions;
pub mod calls;
pub mod dead_letters;
pub mod events;
pub mod overview;

use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use maud::Markup;

use crate::auth::User;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview::page))
        .route("/events", web::get().to(events::search))
        .route("/events/{id}", web::get().to(events::detail))
        .route("/events/{id}/raw", web::get().to(events::raw))
        .route("/events/{id}/revisions", web::get().to(events::revisions))
        .route("/calls/{key}", web::get().to(calls::page))
        .route("/dead-letters", web::get().to(dead_letters::list))
        .route(
            "/dead-letters/redeliver",
            web::post().to(dead_letters::redeliver),
        )
        .route("/actions", web::get().to(actions::list));
}

/// The signed-in user (the auth middleware put it there).
pub(crate) fn user(req: &HttpRequest) -> String {
    req.extensions()
        .get::<User>()
        .map(|u| u.0.clone())
        .unwrap_or_default()
}

/// A rendered page, never cached (it shows live state).
pub(crate) fn html(markup: Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(markup.into_string())
}

/// An error shown as a page, with its status.
pub(crate) fn error_page(
    status: actix_web::http::StatusCode,
    user: &str,
    title: &str,
    message: &str,
) -> HttpResponse {
    let body = maud::html! { p role="alert" class="bad" { (message) } };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(crate::html::page(title, user, "", body).into_string())
}
