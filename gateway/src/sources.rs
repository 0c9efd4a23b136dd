//! The `sources` section: per provider, whether it is served, where (route
//! paths), for which tenant and with which keys ([`crate::auth`] checks
//! them). Keyed by provider name (`onoff`, `xarios`, `telecmi`, `twilio`,
//! `aircall`, `telnyx`), or by a declarative source's name: a source with a
//! `declared` table ([`callstream_schemas::declared`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use callstream_runtime::config::{invalid, ConfigError};
use callstream_schemas::declared::{Declaration, DeclaredSource};
pub use callstream_schemas::DEFAULT_TENANT;
use callstream_schemas::{providers, Provider, Route};

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
    /// A source that is not a built-in provider: its routes, formats and
    /// mapping (`docs/declared-sources.md`).
    pub(crate) declared: Option<Declaration>,
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
            declared: None,
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

/// A configured source's name and the provider serving it.
pub(crate) type Served<'a> = (&'a str, Arc<dyn Provider>);

/// The provider serving each configured source, by source name: a
/// built-in one, or the source's declaration compiled. Each error names
/// the setting (a declaration's jq, with the line and column).
pub(crate) fn providers_of(
    sources: &BTreeMap<String, SourceSettings>,
) -> Result<Vec<Served<'_>>, ConfigError> {
    let mut built_in = providers::all();
    let mut out = Vec::new();
    for (source, cfg) in sources {
        let setting = format!("sources.{source}");
        let provider: Arc<dyn Provider> = if let Some(declaration) = &cfg.declared {
            let compiled = DeclaredSource::compile(source, declaration)
                .map_err(|e| invalid(format!("{setting}.{}", e.setting), e.problem))?;
            Arc::new(compiled)
        } else if let Some(at) = built_in.iter().position(|p| p.id().as_str() == source) {
            Arc::from(built_in.swap_remove(at))
        } else {
            let names: Vec<_> = providers::all().iter().map(|p| p.id().as_str()).collect();
            return Err(invalid(
                &setting,
                format!(
                    "is not a known provider ({}); a declarative source needs a `declared` table (docs/declared-sources.md)",
                    names.join(", ")
                ),
            ));
        };
        out.push((source.as_str(), provider));
    }
    Ok(out)
}

/// Every source is a known provider or a valid declarative source, every
/// path override names one of its routes, and the enabled sources' paths
/// start with `/` and are distinct.
pub fn validate(sources: &BTreeMap<String, SourceSettings>) -> Result<(), ConfigError> {
    let mut seen_paths = BTreeMap::new();
    for (source, provider) in providers_of(sources)? {
        let cfg = &sources[source];
        let setting = format!("sources.{source}");
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

    /// A wrong mapping stops start-up with the source, the setting and
    /// the position: the message `docs/declared-sources.md` shows.
    #[test]
    fn a_wrong_declared_source_names_itself_and_the_position() {
        let declared = |kind: &str| {
            Settings::from_figment(
                Settings::defaults()
                    .merge((
                        "sources.acme_pbx.declared.routes.calls.path",
                        "/v1/acme/calls",
                    ))
                    .merge(("sources.acme_pbx.declared.fields.id", "/call_id"))
                    .merge(("sources.acme_pbx.declared.fields.kind.jq", kind)),
            )
        };
        let error = declared("if .sms then \"sms\"\nelse (.k | nosuch) end")
            .unwrap_err()
            .to_string();
        let page = include_str!("../../docs/declared-sources.md");
        assert!(page.contains(&error), "{error}");
        assert!(declared("if .sms then \"sms\" else \"call\" end").is_ok());
        // A declared source may not take a path a provider serves, nor a
        // built-in provider's name; an unknown source says what it lacks.
        let clash = Settings::from_figment(
            Settings::defaults()
                .merge((
                    "sources.acme_pbx.declared.routes.calls.path",
                    "/v1/onoff/cdr",
                ))
                .merge(("sources.acme_pbx.declared.fields.id", "/id"))
                .merge(("sources.acme_pbx.declared.fields.kind", "/kind")),
        );
        assert!(clash.unwrap_err().to_string().contains("already used"));
        let built_in = Settings::from_figment(
            Settings::defaults()
                .merge(("sources.aircall.declared.routes.calls.path", "/v1/x"))
                .merge(("sources.aircall.declared.fields.id", "/id"))
                .merge(("sources.aircall.declared.fields.kind", "/kind")),
        );
        assert!(built_in
            .unwrap_err()
            .to_string()
            .contains("sources.aircall.declared"));
        let unknown =
            Settings::from_figment(Settings::defaults().merge(("sources.acme.tenant", "t")));
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("needs a `declared` table"));
    }

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
