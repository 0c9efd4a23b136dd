//! URL templates: how a provider's file name or recording id becomes a
//! download URL with a configured secret, and the redactor that keeps those
//! secrets out of logs and dead letters.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};

use callstream_schemas::{Event, ProviderId};

use super::guard;
use super::settings::{RecordingsSettings, TemplateSettings};
use super::source::{Handle, Item, REDACTED};

/// Percent-encodes everything but RFC 3986's unreserved characters, so a
/// value cannot add path segments, query parameters or a host.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Why a value from a payload may not go into a URL. Percent-encoding
/// keeps it inside its segment only until something decodes it: a `..`
/// is left as is (and the URL parser resolves it one folder up, secret
/// attached), and a media server or a proxy in front of it may decode
/// `%2e%2e` or `%2F` once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadValue {
    #[error("is empty")]
    Empty,
    #[error("is a dot-segment (`.` or `..`, maybe percent-encoded)")]
    DotSegment,
    #[error("holds `/`, `\\`, `?`, `#`, `;` or a control character (maybe percent-encoded)")]
    Delimiter,
    #[error("is percent-encoded more than {MAX_DECODINGS} times")]
    Encoded,
}

/// Layers of percent-encoding looked through.
const MAX_DECODINGS: usize = 3;

/// Refuses a value that is empty, a dot-segment or holds a delimiter, as
/// given or after up to [`MAX_DECODINGS`] percent-decodings.
fn check_value(value: &str) -> Result<(), BadValue> {
    if value.trim().is_empty() {
        return Err(BadValue::Empty);
    }
    let mut layer = value.to_string();
    for _ in 0..=MAX_DECODINGS {
        let trimmed = layer.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b == b'.') {
            return Err(BadValue::DotSegment);
        }
        if layer
            .chars()
            .any(|c| "/\\?#;".contains(c) || c.is_control())
        {
            return Err(BadValue::Delimiter);
        }
        let decoded = percent_decode(&layer);
        if decoded == layer {
            return Ok(());
        }
        layer = decoded;
    }
    Err(BadValue::Encoded)
}

/// One round of percent-decoding; a `%` not followed by two hex digits
/// stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match pair {
            Some((hi, lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    FileName,
    Id,
    Tenant,
    Media,
    EventId,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// A parsed `url_template`.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// What a template is filled with.
struct Values<'a> {
    handle: &'a str,
    tenant: &'a str,
    media: &'a str,
    event_id: &'a str,
    secret: &'a str,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or("has a `{` without its `}`")? + open;
            let placeholder = match &rest[open + 1..close] {
                "file_name" => Placeholder::FileName,
                "id" => Placeholder::Id,
                "tenant" => Placeholder::Tenant,
                "media" => Placeholder::Media,
                "event_id" => Placeholder::EventId,
                "secret" => Placeholder::Secret,
                other => {
                    return Err(format!(
                        "has an unknown placeholder {{{other}}} (known: file_name, id, tenant, media, event_id, secret)"
                    ))
                }
            };
            parts.push(Part::Value(placeholder));
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        let template = Template { parts };
        if !template.uses(Placeholder::FileName) && !template.uses(Placeholder::Id) {
            return Err("must contain {file_name} or {id}".into());
        }
        let sample = template.fill(&Values {
            handle: "f.mp3",
            tenant: "t",
            media: "recording",
            event_id: "e",
            secret: "s",
        });
        let url = Url::parse(&sample).map_err(|e| format!("does not give a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("must give an http:// or https:// URL with a host".into());
        }
        Ok(template)
    }

    fn uses(&self, placeholder: Placeholder) -> bool {
        self.parts.contains(&Part::Value(placeholder))
    }

    pub fn uses_secret(&self) -> bool {
        self.uses(Placeholder::Secret)
    }

    /// Whether the host and port are the template's own: no value a payload
    /// brings (or a tenant, a secret) can change where the request goes.
    pub(crate) fn fixed_host(&self) -> bool {
        let origin = |v: &str| {
            let filled = self.fill(&Values {
                handle: v,
                tenant: v,
                media: v,
                event_id: v,
                secret: v,
            });
            Url::parse(&filled)
                .ok()
                .map(|u| (u.host_str().map(str::to_string), u.port()))
        };
        let a = origin("a");
        a.is_some() && a == origin("b")
    }

    /// [`Template::fill`], once every value a payload brings (file name,
    /// id, tenant) that the template uses passed [`check_value`].
    fn fill_checked(&self, values: &Values<'_>) -> Result<String, ResolveError> {
        for part in &self.parts {
            let (placeholder, value) = match part {
                Part::Value(Placeholder::FileName) => ("file_name", values.handle),
                Part::Value(Placeholder::Id) => ("id", values.handle),
                Part::Value(Placeholder::Tenant) => ("tenant", values.tenant),
                _ => continue,
            };
            check_value(value).map_err(|problem| ResolveError::Value {
                placeholder,
                problem,
            })?;
        }
        Ok(self.fill(values))
    }

    fn fill(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(p) => out.push_str(&encode(match p {
                    Placeholder::FileName | Placeholder::Id => values.handle,
                    Placeholder::Tenant => values.tenant,
                    Placeholder::Media => values.media,
                    Placeholder::EventId => values.event_id,
                    Placeholder::Secret => values.secret,
                })),
            }
        }
        out
    }
}

/// Why an item cannot be turned into a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("not a URL")]
    NotAUrl,
    #[error("refused: {0}")]
    Refused(#[from] guard::Refused),
    #[error("no {{secret}} configured for tenant `{0}`")]
    NoSecret(String),
    #[error("the value for {{{placeholder}}} {problem}")]
    Value {
        placeholder: &'static str,
        problem: BadValue,
    },
}

impl ResolveError {
    /// The `reason` label of `callstream_recordings_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NotAUrl => "invalid_url",
            ResolveError::Refused(_) => "refused",
            ResolveError::NoSecret(_) => "config",
            ResolveError::Value { .. } => "invalid_value",
        }
    }
}

struct ProviderTemplate {
    template: Template,
    secret: Option<SecretString>,
    tenant_secrets: BTreeMap<String, SecretString>,
    /// Its URLs may reach non-public addresses (see [`Resolved`]).
    private_ok: bool,
}

/// Turns items into download URLs, checked against the address guard.
pub(crate) struct Resolver {
    templates: HashMap<ProviderId, ProviderTemplate>,
    allow_private_targets: bool,
}

/// A URL to download, and whether it may reach a non-public address.
#[derive(Debug)]
pub(crate) struct Resolved {
    pub url: Url,
    /// Only for a URL the operator's template built (with
    /// `allow_private_templates`), or anything with `allow_private_targets`;
    /// never for a URL a payload named.
    pub(crate) private_ok: bool,
}

impl Resolver {
    /// Templates were validated with the settings; one that still fails to
    /// parse is left out (its items count as unconfigured).
    pub fn new(settings: &RecordingsSettings) -> Resolver {
        let templates = settings
            .templates
            .iter()
            .filter_map(|(provider, t): (&ProviderId, &TemplateSettings)| {
                let template = Template::parse(&t.url_template).ok()?;
                Some((
                    *provider,
                    ProviderTemplate {
                        private_ok: settings.allow_private_targets
                            || (settings.allow_private_templates && template.fixed_host()),
                        template,
                        secret: t.secret.clone(),
                        tenant_secrets: t.tenant_secrets.clone(),
                    },
                ))
            })
            .collect();
        Resolver {
            templates,
            allow_private_targets: settings.allow_private_targets,
        }
    }

    /// The URL to fetch, or `None` when no template covers the item.
    pub fn resolve(&self, event: &Event, item: &Item) -> Result<Option<Resolved>, ResolveError> {
        let (raw, private_ok) = match &item.handle {
            Handle::Url(url) => (url.clone(), self.allow_private_targets),
            Handle::FileName(value) | Handle::Id(value) => {
                let Some(t) = self.templates.get(&event.provider) else {
                    return Ok(None);
                };
                let wanted = match item.handle {
                    Handle::FileName(_) => Placeholder::FileName,
                    _ => Placeholder::Id,
                };
                if !t.template.uses(wanted) {
                    return Ok(None);
                }
                let secret = match t.tenant_secrets.get(&event.tenant).or(t.secret.as_ref()) {
                    Some(secret) => secret.expose_secret(),
                    None if t.template.uses_secret() => {
                        return Err(ResolveError::NoSecret(event.tenant.clone()))
                    }
                    None => "",
                };
                let url = t.template.fill_checked(&Values {
                    handle: value,
                    tenant: &event.tenant,
                    media: item.media.as_str(),
                    event_id: &event.event_id.to_string(),
                    secret,
                })?;
                (url, t.private_ok)
            }
        };
        let url = Url::parse(&raw).map_err(|_| ResolveError::NotAUrl)?;
        guard::check_url(&url, private_ok)?;
        Ok(Some(Resolved { url, private_ok }))
    }

    /// Every configured template secret, to scrub from error texts.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.templates.values() {
            out.extend(t.secret.iter().map(|s| s.expose_secret().to_string()));
            out.extend(
                t.tenant_secrets
                    .values()
                    .map(|s| s.expose_secret().to_string()),
            );
        }
        out
    }
}

/// Removes secrets from text bound for logs and dead letters, as given and
/// percent-encoded (as they appear in a URL).
#[derive(Debug, Clone, Default)]
pub(crate) struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut needles: Vec<String> = secrets
            .into_iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| [encode(&s), s])
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
        needles.dedup();
        Redactor { needles }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for needle in &self.needles {
            if text.contains(needle.as_str()) {
                text = text.replace(needle.as_str(), REDACTED);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_values_are_encoded_and_placeholders_checked() {
        let t = Template::parse("https://h.example/play?file={file_name}&s={secret}").unwrap();
        let filled = t.fill(&Values {
            handle: "../a b&c=d.mp3",
            tenant: "",
            media: "recording",
            event_id: "",
            secret: "s/1",
        });
        assert_eq!(
            filled,
            "https://h.example/play?file=..%2Fa%20b%26c%3Dd.mp3&s=s%2F1"
        );
        assert!(Template::parse("https://h.example/{tenant}").is_err());
        assert!(Template::parse("https://h.example/{nope}/{id}").is_err());
        assert!(Template::parse("ftp://h.example/{id}").is_err());
        assert!(Template::parse("https://h.example/{id").is_err());
    }

    #[test]
    fn values_that_could_change_the_path_are_refused() {
        let refused = [
            ("", BadValue::Empty),
            ("  ", BadValue::Empty),
            (".", BadValue::DotSegment),
            ("..", BadValue::DotSegment),
            ("...", BadValue::DotSegment),
            (" .. ", BadValue::DotSegment),
            ("%2e%2e", BadValue::DotSegment),
            ("%2E%2E", BadValue::DotSegment),
            (".%2E", BadValue::DotSegment),
            ("%2e.", BadValue::DotSegment),
            ("%2e", BadValue::DotSegment),
            ("%252e%252e", BadValue::DotSegment),
            ("%25252e%25252e", BadValue::DotSegment),
            ("../admin", BadValue::Delimiter),
            ("a/b", BadValue::Delimiter),
            ("a\\b", BadValue::Delimiter),
            ("..%2Fadmin", BadValue::Delimiter),
            ("%5C..", BadValue::Delimiter),
            ("a?key=x", BadValue::Delimiter),
            ("a%3Fkey=x", BadValue::Delimiter),
            ("a#frag", BadValue::Delimiter),
            ("a%23frag", BadValue::Delimiter),
            ("..;x", BadValue::Delimiter),
            ("a%00b", BadValue::Delimiter),
            ("a\nb", BadValue::Delimiter),
            ("%2525252e", BadValue::Encoded),
        ];
        for (value, problem) in refused {
            assert_eq!(check_value(value), Err(problem), "{value:?}");
        }
        for fine in [
            "00000000-0000-0000-0000-000000000000",
            "157018440105699392452463833_1111113.mp3",
            "rec-1",
            "a..b",
            ".hidden",
            "100%",
            "%zz",
            "2222223",
        ] {
            assert_eq!(check_value(fine), Ok(()), "{fine:?}");
        }
    }

    #[test]
    fn a_refused_value_gives_no_url() {
        let t =
            Template::parse("https://h.example/api/rec/{id}?tenant={tenant}&key={secret}").unwrap();
        let values = |handle, tenant| Values {
            handle,
            tenant,
            media: "recording",
            event_id: "e",
            secret: "s3cret",
        };
        let err = t.fill_checked(&values("..", "acme")).unwrap_err();
        assert_eq!(err.reason(), "invalid_value");
        assert_eq!(
            err.to_string(),
            "the value for {id} is a dot-segment (`.` or `..`, maybe percent-encoded)"
        );
        let err = t.fill_checked(&values("rec-1", "%2e%2e")).unwrap_err();
        assert!(
            err.to_string().starts_with("the value for {tenant} "),
            "{err}"
        );
        assert_eq!(
            t.fill_checked(&values("rec-1", "acme")).unwrap(),
            "https://h.example/api/rec/rec-1?tenant=acme&key=s3cret"
        );
        // Unused placeholders are not checked: the tenant is not in the URL.
        let t = Template::parse("https://h.example/play?file={file_name}").unwrap();
        assert!(t.fill_checked(&values("f.mp3", "")).is_ok());
    }

    #[test]
    fn a_template_whose_values_can_move_its_host_is_not_fixed() {
        let fixed = |t: &str| Template::parse(t).unwrap().fixed_host();
        assert!(fixed("http://10.0.0.5:8080/rec/{id}?k={secret}"));
        assert!(fixed("https://pbx.example/{tenant}/{file_name}"));
        assert!(!fixed("https://{tenant}.pbx.example/{id}"));
        assert!(!fixed("http://{id}/x"));
        assert!(!fixed("http://10.0.0.{id}/x"));
    }

    #[test]
    fn redactor_removes_plain_and_encoded_secrets() {
        let r = Redactor::new(["p@ss word".to_string()]);
        assert_eq!(
            r.scrub("a p@ss word b p%40ss%20word"),
            "a REDACTED b REDACTED"
        );
    }
}
