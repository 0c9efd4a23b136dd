//! Sign-in: HTTP Basic against the bcrypt hashes of `console.users`, and
//! the CSRF token every changing POST carries.
//!
//! A browser resends Basic credentials by itself, to any page of the
//! console, whoever made the page that asks: so a POST also needs a token
//! only the console's own pages hold (an HMAC of the user name under a key
//! drawn at start, [`Users::csrf_token`]), and a cross-site `Origin` is
//! refused. A bcrypt check costs tens of milliseconds by design; a
//! password that passed is remembered (as its SHA-256, keyed by user) for
//! a few minutes so each page does not pay it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use base64::Engine;
use ring::{digest, hmac};
use subtle::ConstantTimeEq;

use crate::Shared;

/// How long a checked password is taken without bcrypt again.
const REMEMBER: Duration = Duration::from_secs(300);

/// The signed-in user, in the request's extensions.
#[derive(Debug, Clone)]
pub struct User(pub String);

pub struct Users {
    hashes: BTreeMap<String, String>,
    /// (user, SHA-256 of the password) → when it last passed bcrypt.
    passed: Mutex<HashMap<(String, Vec<u8>), Instant>>,
    csrf_key: hmac::Key,
}

impl Users {
    /// Refuses an empty list (nobody could sign in) and anything that is
    /// not a bcrypt hash, naming the user.
    pub fn new(users: &BTreeMap<String, String>) -> anyhow::Result<Users> {
        anyhow::ensure!(
            !users.is_empty(),
            "no console user: set console.users.<name> to a bcrypt hash \
             (CALLSTREAM_CONSOLE__USERS__OPS='$2b$12$...'; `htpasswd -nbBC 12 ops PASSWORD` prints one)"
        );
        for (name, hash) in users {
            anyhow::ensure!(
                hash.parse::<bcrypt::HashParts>().is_ok(),
                "console.users.{name} is not a bcrypt hash ($2b$...)"
            );
        }
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Ok(Users {
            hashes: users.clone(),
            passed: Mutex::new(HashMap::new()),
            csrf_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// Whether `password` is `user`'s.
    pub fn check(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.hashes.get(user) else {
            return false;
        };
        let digest = digest::digest(&digest::SHA256, password.as_bytes())
            .as_ref()
            .to_vec();
        let key = (user.to_string(), digest);
        let now = Instant::now();
        {
            let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
            passed.retain(|_, at| now.duration_since(*at) < REMEMBER);
            if passed.contains_key(&key) {
                return true;
            }
        }
        if bcrypt::verify(password, hash).unwrap_or(false) {
            let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
            passed.insert(key, now);
            return true;
        }
        false
    }

    /// The token `user`'s forms carry.
    pub fn csrf_token(&self, user: &str) -> String {
        let tag = hmac::sign(&self.csrf_key, user.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// Whether `token` is `user`'s (compared in constant time).
    pub fn csrf_ok(&self, user: &str, token: &str) -> bool {
        let expected = self.csrf_token(user);
        expected.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

/// `Authorization: Basic` → (user, password).
fn basic(req: &ServiceRequest) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// A POST from another site's page: its `Origin` names another host.
fn cross_site(req: &ServiceRequest) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return false;
    };
    let host = req.connection_info().host().to_string();
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    origin == "null" || origin_host != host
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((
            header::WWW_AUTHENTICATE,
            r#"Basic realm="callstream console", charset="UTF-8""#,
        ))
        .content_type("text/plain; charset=utf-8")
        .body("Sign in with a console user (console.users).\n")
}

/// Every page: a known user, or 401 asking for one; a POST from another
/// site: 403.
pub async fn require_user(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let shared = req
        .app_data::<web::Data<Shared>>()
        .expect("the console's state is registered")
        .clone();
    let user = basic(&req).filter(|(user, password)| shared.auth.check(user, password));
    let Some((user, _)) = user else {
        return Ok(req.into_response(unauthorized()));
    };
    if req.method() == actix_web::http::Method::POST && cross_site(&req) {
        return Ok(
            req.into_response(HttpResponse::Forbidden().body("cross-site request refused\n"))
        );
    }
    req.extensions_mut().insert(User(user));
    Ok(next.call(req).await?.map_into_boxed_body())
}
