//! The overview.
use actix_web::{web, HttpRequest, HttpResponse};

use crate::Shared;

pub async fn page(req: HttpRequest, _shared: web::Data<Shared>) -> HttpResponse {
    let user = super::user(&req);
    super::html(crate::html::page("Overview", &user, "/", maud::html! { p { "…" } }))
}
