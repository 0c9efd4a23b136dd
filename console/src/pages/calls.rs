//! TODO
use actix_web::{HttpRequest, HttpResponse};
pub async fn page(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("page", &super::user(&req), "", maud::html!{})) }
