//! TODO
use actix_web::{HttpRequest, HttpResponse};
pub async fn list(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("list", &super::user(&req), "", maud::html!{})) }
pub async fn redeliver(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("redeliver", &super::user(&req), "", maud::html!{})) }
