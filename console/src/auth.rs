//! Sign-in: HTTP Basic against the bcrypt hashes of `console.users`, and
//! the CSRF token every changing POST carries.
//!
//! A browser resends Basic credentials by itself, to any page of the
//! console, whoever made the page that asks: so a POST also needs a token
//! only the console's own pages hold (an HMAC of the user name under a key
//! drawn at start, [`Users::csrf_token`]), and a cross-site `Origin` is
//! refused. A bcrypt check costs tens to hundreds of milliseconds of CPU
//! by design; a password that passed is remembered (as its SHA-256, keyed
//! by user) for a few minutes so each page does not pay it again.
//!
//! Wrong passwords are the console's cheapest attack: each one costs a
//! bcrypt check, and the console has two HTTP workers. So checks run on
//! blocking threads, at most two at a time; a client
//! address with [`FAILURES_PER_MINUTE`] failed sign-ins in the last minute
//! gets 429 without a check until the minute is up (a remembered password
//! still passes); and an unknown user costs a check like a known one, so
//! the time taken does not tell which names exist.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
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
/// Failed sign-ins a client address may make in a minute.
pub const FAILURES_PER_MINUTE: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses whose failures are counted at once; past that, new ones are
/// not (they still wait for a check like everyone else).
const TRACKED_ADDRESSES: usize = 10_000;
/// bcrypt checks running at once.
const CHECKS_AT_ONCE: usize = 2;

/// What a sign-in attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Passed,
    Failed,
    /// Too many failures from its address: not checked.
    Limited,
}

/// The signed-in user, in the request's extensions.
#[derive(Debug, Clone)]
pub struct User(pub String);

pub struct Users {
    hashes: BTreeMap<String, String>,
    /// Checked for an unknown user, at the highest cost of the users.
    decoy: String,
    /// (user, SHA-256 of the password) → when it last passed bcrypt.
    passed: Mutex<HashMap<(String, Vec<u8>), Instant>>,
    /// Client address → failed sign-ins since the window's start.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    checks: Arc<tokio::sync::Semaphore>,
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
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|h| h.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let decoy = bcrypt::hash(uuid::Uuid::new_v4().as_bytes(), cost)?;
        Ok(Users {
            hashes: users.clone(),
            decoy,
            passed: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checks: Arc::new(tokio::sync::Semaphore::new(CHECKS_AT_ONCE)),
            csrf_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// Whether `password` is `user`'s, asked from `client`.
    pub async fn check(&self, client: Option<IpAddr>, user: &str, password: &str) -> Check {
        let digest = digest::digest(&digest::SHA256, password.as_bytes())
            .as_ref()
            .to_vec();
        let key = (user.to_string(), digest);
        let now = Instant::now();
        {
            let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
            passed.retain(|_, at| now.duration_since(*at) < REMEMBER);
            if passed.contains_key(&key) {
                return Check::Passed;
            }
        }
        if client.is_some_and(|ip| self.limited(ip, now)) {
            return Check::Limited;
        }
        let known = self.hashes.get(user);
        let hash = known.unwrap_or(&self.decoy).clone();
        let password = password.to_string();
        let verified = match self.checks.clone().acquire_owned().await {
            // The permit goes with the check: it is held until bcrypt is
            // done even if the request is dropped meanwhile.
            Ok(permit) => tokio::task::spawn_blocking(move || {
                let _permit = permit;
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false),
            Err(_) => false,
        };
        if verified && known.is_some() {
            let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
            passed.insert(key, Instant::now());
            return Check::Passed;
        }
        if let Some(ip) = client {
            self.failed(ip, Instant::now());
        }
        Check::Failed
    }

    /// Whether `client` has used up its failures of the current minute.
    fn limited(&self, client: IpAddr, now: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(&client).is_some_and(|(n, since)| {
            *n >= FAILURES_PER_MINUTE && now.duration_since(*since) < FAILURE_WINDOW
        })
    }

    fn failed(&self, client: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, (_, since)| now.duration_since(*since) < FAILURE_WINDOW);
        if failures.len() >= TRACKED_ADDRESSES && !failures.contains_key(&client) {
            return;
        }
        let (n, _) = failures.entry(client).or_insert((0, now));
        *n += 1;
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

fn too_many() -> HttpResponse {
    HttpResponse::TooManyRequests()
        .insert_header((header::RETRY_AFTER, FAILURE_WINDOW.as_secs().to_string()))
        .content_type("text/plain; charset=utf-8")
        .body("Too many failed sign-ins from this address: try again in a minute.\n")
}

/// Every page: a known user, or 401 asking for one (429 after too many
/// failures); a POST from another site: 403.
pub async fn require_user(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let shared = req
        .app_data::<web::Data<Shared>>()
        .expect("the console's state is registered")
        .clone();
    let Some((user, password)) = basic(&req) else {
        return Ok(req.into_response(unauthorized()));
    };
    let client = req.peer_addr().map(|a| a.ip());
    match shared.auth.check(client, &user, &password).await {
        Check::Passed => {}
        Check::Failed => return Ok(req.into_response(unauthorized())),
        Check::Limited => return Ok(req.into_response(too_many())),
    }
    if req.method() == actix_web::http::Method::POST && cross_site(&req) {
        return Ok(
            req.into_response(HttpResponse::Forbidden().body("cross-site request refused\n"))
        );
    }
    req.extensions_mut().insert(User(user));
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        let hash = bcrypt::hash("right", 4).unwrap();
        Users::new(&BTreeMap::from([("ops".to_string(), hash)])).unwrap()
    }

    #[tokio::test]
    async fn an_address_with_too_many_failures_is_not_checked_for_a_minute() {
        let users = users();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..FAILURES_PER_MINUTE {
            assert_eq!(users.check(Some(a), "ops", "wrong").await, Check::Failed);
        }
        assert_eq!(users.check(Some(a), "ops", "wrong").await, Check::Limited);
        // Even the right password, not yet remembered, waits out the minute.
        assert_eq!(users.check(Some(a), "ops", "right").await, Check::Limited);
        // Another address is not concerned, and its sign-in is remembered...
        assert_eq!(users.check(Some(b), "ops", "right").await, Check::Passed);
        // ...which then passes from anywhere, as a signed-in browser's pages do.
        assert_eq!(users.check(Some(a), "ops", "right").await, Check::Passed);
        // The minute over, the address is checked again.
        assert!(!users.limited(a, Instant::now() + FAILURE_WINDOW));
    }

    #[tokio::test]
    async fn an_unknown_user_fails_like_a_wrong_password_and_counts() {
        let users = users();
        let a: IpAddr = "192.0.2.3".parse().unwrap();
        assert!(users.decoy.parse::<bcrypt::HashParts>().is_ok());
        for _ in 0..FAILURES_PER_MINUTE {
            assert_eq!(users.check(Some(a), "nobody", "right").await, Check::Failed);
        }
        assert_eq!(users.check(Some(a), "ops", "right").await, Check::Limited);
    }
}
