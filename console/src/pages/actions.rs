//! `/actions`: who did what, when, newest first.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;

use crate::{audit, Shared};

pub async fn list(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let user = super::user(&req);
    let actions = match audit::newest(&shared.db, 200).await {
        Ok(a) => a,
        Err(e) => {
            return super::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &user,
                "Actions",
                &format!("PostgreSQL: {e}"),
            )
        }
    };
    let body = html! {
        p { "Every dry run and redelivery, newest first (table " code { "console_actions" } ")." }
        @if actions.is_empty() {
            p id="no-actions" { "Nothing was done in the console yet." }
        }
        table id="actions" {
            caption { "Actions" }
            thead { tr { th scope="col" { "Time" } th scope="col" { "User" } th scope="col" { "Action" } th scope="col" { "Letter" } th scope="col" { "Outcome" } th scope="col" { "Detail" } } }
            tbody {
                @for a in &actions {
                    tr {
                        td { (a.at.format("%Y-%m-%d %H:%M:%S UTC")) }
                        td { (a.actor) }
                        td { (a.action) }
                        td { code { (a.letter) } }
                        td { (a.outcome) }
                        td { details { summary { "Detail" } pre { (crate::html::pretty(&a.detail)) } } }
                    }
                }
            }
        }
    };
    super::html(crate::html::page("Actions", &user, "/actions", body))
}
