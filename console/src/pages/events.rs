//! TODO
use actix_web::{HttpRequest, HttpResponse};
pub async fn search(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("search", &super::user(&req), "", maud::html!{})) }
pub async fn detail(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("detail", &super::user(&req), "", maud::html!{})) }
pub async fn raw(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("raw", &super::user(&req), "", maud::html!{})) }
pub async fn revisions(req: HttpRequest) -> HttpResponse { super::html(crate::html::page("revisions", &super::user(&req), "", maud::html!{})) }
