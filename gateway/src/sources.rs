//! The `sources` section: per provider, whether it is served, where (route
//! paths), for which tenant and with which keys ([`crate::auth`] checks
//! them). Keyed by provider name (`onoff`, `xarios`, `telecmi`, `twilio`, `aircall`).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

use callstream_runtime::config::{invalid, ConfigError};
pub use callstream_schemas::DEFAULT_TENANT;
use callstream_schemas::{providers, Route};

use crate::signature::{SignatureSettings, Verifier};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// A disabled source serves no routes (404).
    pub enabled: bool,
    /// Tenant recorded on events whose payload names none.
    pub tenant: String,
    /// Accepted keys; several so keys can rotate. None: accept everything.
    pub api_keys: Vec<SecretString>,
    /// Extra header that may carry the key (besides `?token=`,
    /// `Authorization: x-api-key <key>`, `Authorization: Bearer <key>`, `x-api-key`).
    pub(crate) auth_header: Option<String>,
    /// Path overrides by route name (`cdr`, `sms`, `postcall`, `event`).
    pub paths: BTreeMap<String, String>,
    /// How a delivery proves itself beyond a key: a signature scheme
    /// ([`crate::signature`]). None: keys only.
    pub(crate) signature: Option<SignatureSettings>,
    /// Twilio's auth tokens (several, for rotation): deliveries must carry
    /// a valid `X-Twilio-Signature`. The same as `signature.scheme =
    /// "twilio"` with these as its secrets.
    pub(crate) auth_tokens: Vec<SecretString>,
    /// The scheme, host (and optional port and path prefix) the platform
    /// calls, when a proxy stands in front: the URL a signature covers is
    /// this followed by the request's path and query.
    pub(crate) public_url: Option<String>,
    /// Without `public_url`: take the scheme and host from
    /// `X-Forwarded-Proto` / `X-Forwarded-Host` (and a path prefix from
    /// `X-Forwarded-Prefix`). Only behind a proxy that sets them: a client
    /// could send them too.
    pub(crate) trust_forwarded_headers: bool,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            enabled: true,
            tenant: DEFAULT_TENANT.into(),
            api_keys: Vec::new(),
            auth_header: None,
            paths: BTreeMap::new(),
            signature: None,
            auth_tokens: Vec::new(),
            public_url: None,
            trust_forwarded_headers: false,
        }
    }
}

/// The defaults: every provider, each with the defaults of
/// [`SourceSettings`] (an empty table, so figment fills in the rest).
pub fn defaults() -> BTreeMap<String, BTreeMap<String, String>> {
    providers::all()
        .iter()
        .map(|p| (p.id().as_str().to_string(), BTreeMap::new()))
        .collect()
}

/// The configured path of a provider route.
pub(crate) fn path_of<'a>(
    sources: &'a BTreeMap<String, SourceSettings>,
    source: &str,
    route: &'a Route,
) -> &'a str {
    sources
        .get(source)
        .and_then(|s| s.paths.get(route.name))
        .map(String::as_str)
        .unwrap_or(route.default_path)
}

/// Every source is a known provider, every path override names one of its
/// routes, and the enabled sources' paths start with `/` and are distinct.
pub fn validate(sources: &BTreeMap<String, SourceSettings>) -> Result<(), ConfigError> {
    let known = providers::all();
    let mut seen_paths = BTreeMap::new();
    for (source, cfg) in sources {
        let setting = format!("sources.{source}");
        let provider = known
            .iter()
            .find(|p| p.id().as_str() == source)
            .ok_or_else(|| {
                let names: Vec<_> = known.iter().map(|p| p.id().as_str()).collect();
                invalid(
                    &setting,
                    format!("is not a known provider ({})", names.join(", ")),
                )
            })?;
        for route in cfg.paths.keys() {
            if !provider.routes().iter().any(|r| r.name == route) {
                let names: Vec<_> = provider.routes().iter().map(|r| r.name).collect();
                return Err(invalid(
                    format!("{setting}.paths.{route}"),
                    format!("is not a route of {source} (routes: {})", names.join(", ")),
                ));
            }
        }
        if !cfg.enabled {
            continue;
        }
        for route in provider.routes() {
            let path = path_of(sources, source, route);
            if !path.starts_with('/') {
                return Err(invalid(
                    format!("{setting}.paths.{}", route.name),
                    "must start with `/`",
                ));
            }
            if let Some(other) =
                seen_paths.insert(path.to_string(), format!("{source}.{}", route.name))
            {
                return Err(invalid(
                    format!("{setting}.paths.{}", route.name),
                    format!("`{path}` is already used by {other}"),
                ));
            }
        }
        Verifier::of_source(cfg.signature.as_ref(), &cfg.auth_tokens, &setting)?;
        if let Some(url) = &cfg.public_url {
            let ok = url.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(['?', '#'])
            });
            if !ok {
                return Err(invalid(
                    format!("{setting}.public_url"),
                    "must be an http:// or https:// URL with a host, and no query",
                ));
            }
        }
        if let Some(header) = &cfg.auth_header {
            actix_web::http::header::HeaderName::try_from(header.as_str()).map_err(|_| {
                invalid(
                    format!("{setting}.auth_header"),
                    "is not a valid header name",
                )
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn a_disabled_source_may_keep_a_clashing_path() {
        let s = Settings::from_figment(
            Settings::defaults()
                .merge(("sources.xarios.enabled", false))
                .merge(("sources.xarios.paths.postcall", "/v1/onoff/cdr")),
        );
        assert!(s.is_ok());
    }
}
