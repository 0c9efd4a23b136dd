//! `[recordings]` settings of `callstream-recordings`. Checked at start-up;
//! every error names the setting it is about. Secrets (store credentials,
//! template secrets) are `SecretString`s: never printed, never logged.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use callstream_schemas::ProviderId;

use super::template::Template;
use callstream_runtime::config::{invalid, ConfigError};

/// Most media handles archived per event (a Xarios call lists a few
/// `recordingIds`); more are dead-lettered. It bounds how long one record
/// can take.
pub(crate) const MAX_MEDIA_PER_EVENT: usize = 8;

/// Longest one record may take, about a day: it holds its key's later
/// records (revisions of one event) until then, and its partition's
/// commits. (The consumer keeps polling Kafka meanwhile.)
const MAX_RECORD_MS: u64 = 86_400_000 - 60_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsSettings {
    /// Kafka consumer group: where the archiver resumes after a restart. A
    /// new name re-reads the unique topic from its beginning (archived media
    /// are not downloaded again, see the module documentation).
    pub group_id: String,
    /// Where audio is stored.
    pub store: StoreSettings,
    /// Largest audio accepted, in bytes. A larger `Content-Length` is refused
    /// before the body is read; a body that grows past it is cut off and
    /// nothing of it is kept. The download is streamed: memory use does not
    /// grow with the file.
    pub max_bytes: u64,
    /// One download attempt (connect, headers and the whole body) must finish
    /// within this; then it counts as a failed, retriable attempt.
    pub timeout_ms: u64,
    /// Attempts per media handle for failures that may pass (timeouts,
    /// connection errors, `408`, `429`, `5xx`, storage errors), the first
    /// included; then the event is dead-lettered. Not-ready answers (`404`)
    /// are bounded by `not_ready_retry_secs` instead.
    pub max_attempts: u32,
    /// Back-off before the first retry; doubled for each further retry, with
    /// jitter. Also the first wait after a not-ready answer.
    pub initial_backoff_ms: u64,
    /// Upper bound of one back-off, and the polling interval of a link that
    /// is not ready yet.
    pub max_backoff_ms: u64,
    /// Records archived at once. A link that is not ready yet (or slow)
    /// holds only its own record (and later ones of the same event); the
    /// rest go on. Offsets are committed only below the oldest record in
    /// progress of each partition.
    pub concurrency: usize,
    /// How long a `404` keeps being retried, from the first attempt. Onoff
    /// publishes recordings 5–8 minutes after the call, and a link sent
    /// early answers `404` until then. `0`: a `404` is final at once.
    pub not_ready_retry_secs: u64,
    /// Allow downloads from loopback, private, link-local, unique-local and
    /// other non-public addresses. Off: a URL naming such an address, or a
    /// host resolving only to such addresses, is refused without connecting
    /// (a webhook payload must not make the archiver reach internal
    /// services). Tests turn it on to reach 127.0.0.1; it covers URLs a
    /// payload names, so leave it off in production.
    pub allow_private_targets: bool,
    /// Allow URLs built from `templates` to reach non-public addresses: an
    /// on-premises PBX (Xarios) serving its recordings on a private network.
    /// Only templates whose host and port no value can change (no
    /// placeholder in the host); URLs a payload names stay guarded.
    pub allow_private_templates: bool,
    /// URL templates for providers that send a file name (TeleCMI) or ids
    /// (Xarios) instead of a URL, by provider (`[recordings.templates.telecmi]`).
    /// A provider without one: its file names and ids are not archived
    /// (counted as `unconfigured`). Not serialized: no default template.
    #[serde(skip_serializing)]
    pub templates: HashMap<ProviderId, TemplateSettings>,
}

impl Default for RecordingsSettings {
    fn default() -> Self {
        RecordingsSettings {
            group_id: "callstream-recordings".into(),
            store: StoreSettings::default(),
            max_bytes: 200 * 1024 * 1024,
            timeout_ms: 120_000,
            max_attempts: 5,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            not_ready_retry_secs: 900,
            concurrency: 8,
            allow_private_targets: false,
            allow_private_templates: false,
            templates: HashMap::new(),
        }
    }
}

/// Which object store holds the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A directory on this machine (`dir`); files are fsynced before the
    /// event that points to them is published.
    Local,
    /// An S3-compatible bucket (AWS, MinIO, Ceph, R2, ...).
    S3,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `local` (default) or `s3`.
    pub kind: StoreKind,
    /// `local`: the directory (created if missing). It must persist: a
    /// volume, not the container's own disk.
    pub dir: PathBuf,
    /// Prepended to every object key (`archive/2024` → `archive/2024/<tenant>/…`);
    /// empty by default.
    pub prefix: String,
    /// `s3`: the bucket. Required for `s3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// `s3`: the region (default `us-east-1`, or `AWS_REGION`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `s3`: endpoint of an S3-compatible service (`https://minio.internal:9000`);
    /// unset for AWS itself. Requests use path-style addressing when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: access key id; unset: `AWS_ACCESS_KEY_ID`, or the instance's role.
    #[serde(skip_serializing)]
    pub(crate) access_key_id: Option<SecretString>,
    /// `s3`: secret access key; unset: `AWS_SECRET_ACCESS_KEY`, or the role.
    #[serde(skip_serializing)]
    pub(crate) secret_access_key: Option<SecretString>,
    /// `s3`: allow a plain `http://` endpoint (a local MinIO). Off by default.
    pub(crate) allow_http: bool,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::Local,
            dir: PathBuf::from("recordings"),
            prefix: String::new(),
            bucket: None,
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        }
    }
}

/// How a provider's file names or ids become download URLs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// An http(s) URL with placeholders, each replaced by its value
    /// percent-encoded: `{file_name}` (TeleCMI `filename`), `{id}` (one of
    /// Xarios `recordingIds`), `{tenant}`, `{media}` (`recording` or
    /// `voicemail`), `{event_id}`, `{secret}`. At least one of `{file_name}`
    /// and `{id}`. Example: `https://rest.telecmi.com/v2/play?appid={tenant}&file={file_name}&secret={secret}`.
    pub url_template: String,
    /// Value of `{secret}` (an API secret). Never logged, never published:
    /// the recordings event names only the file name or id.
    pub secret: Option<SecretString>,
    /// Value of `{secret}` per tenant (TeleCMI: one secret per app id),
    /// taking precedence over `secret`.
    #[serde(default)]
    pub(crate) tenant_secrets: BTreeMap<String, SecretString>,
}

impl RecordingsSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.trim().is_empty() {
            return Err(invalid("recordings.group_id", "must not be empty"));
        }
        self.store.validate()?;
        let positive = [
            ("max_bytes", self.max_bytes),
            ("timeout_ms", self.timeout_ms),
            ("max_attempts", u64::from(self.max_attempts)),
            ("initial_backoff_ms", self.initial_backoff_ms),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(
                    format!("recordings.{name}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.concurrency == 0 {
            return Err(invalid("recordings.concurrency", "must be at least 1"));
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return Err(invalid(
                "recordings.max_backoff_ms",
                "must be at least initial_backoff_ms",
            ));
        }
        for (provider, template) in &self.templates {
            template.validate(*provider, self.allow_private_templates)?;
        }
        let worst = self.worst_case_record();
        if worst.as_millis() > u128::from(MAX_RECORD_MS) {
            return Err(invalid(
                "recordings.not_ready_retry_secs",
                format!(
                    "with max_attempts, timeout_ms and max_backoff_ms lets one event take up to {} s \
                     ({MAX_MEDIA_PER_EVENT} media); keep it under {} s",
                    worst.as_secs(),
                    MAX_RECORD_MS / 1000
                ),
            ));
        }
        Ok(())
    }

    // Spelled as in `crm/settings.rs`; see the note there.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }

    pub fn max_backoff(&self) -> Duration {
        Duration::from_millis(self.max_backoff_ms)
    }

    pub fn not_ready_window(&self) -> Duration {
        Duration::from_secs(self.not_ready_retry_secs)
    }

    /// The most one media handle can take: the not-ready window, then every
    /// attempt timing out with the longest back-off between them (plus one
    /// not-ready poll that may overrun the window).
    pub(crate) fn worst_case_item(&self) -> Duration {
        let attempts = self.max_attempts;
        self.not_ready_window()
            .saturating_add(self.max_backoff())
            .saturating_add(self.timeout().saturating_mul(attempts.saturating_add(1)))
            .saturating_add(self.max_backoff().saturating_mul(attempts))
    }

    /// The most one event can take ([`MAX_MEDIA_PER_EVENT`] handles).
    pub(crate) fn worst_case_record(&self) -> Duration {
        self.worst_case_item()
            .saturating_mul(MAX_MEDIA_PER_EVENT as u32)
    }
}

impl StoreSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(invalid(
                "recordings.store.prefix",
                "must not contain `.` or `..` segments",
            ));
        }
        match self.kind {
            StoreKind::Local => {
                if self.dir.as_os_str().is_empty() {
                    return Err(invalid("recordings.store.dir", "must not be empty"));
                }
            }
            StoreKind::S3 => {
                if self.bucket.as_deref().is_none_or(|b| b.trim().is_empty()) {
                    return Err(invalid(
                        "recordings.store.bucket",
                        "is required when store.kind is s3",
                    ));
                }
                if let Some(endpoint) = &self.endpoint {
                    let url = Url::parse(endpoint).map_err(|e| {
                        invalid("recordings.store.endpoint", format!("is not a URL ({e})"))
                    })?;
                    match url.scheme() {
                        "https" => {}
                        "http" if self.allow_http => {}
                        "http" => {
                            return Err(invalid(
                                "recordings.store.endpoint",
                                "is plain http: set recordings.store.allow_http = true to allow it",
                            ))
                        }
                        _ => {
                            return Err(invalid(
                                "recordings.store.endpoint",
                                "must be an http:// or https:// URL",
                            ))
                        }
                    }
                }
                if self.access_key_id.is_some() != self.secret_access_key.is_some() {
                    return Err(invalid(
                        "recordings.store.secret_access_key",
                        "and access_key_id must be set together",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl TemplateSettings {
    fn validate(&self, provider: ProviderId, allow_private: bool) -> Result<(), ConfigError> {
        let setting = |field: &str| format!("recordings.templates.{}.{field}", provider.as_str());
        let template = Template::parse(&self.url_template)
            .map_err(|problem| invalid(setting("url_template"), problem))?;
        if allow_private && !template.fixed_host() {
            return Err(invalid(
                setting("url_template"),
                "has a placeholder in its host, which allow_private_templates does not allow: \
                 a value from a payload could then pick any internal address",
            ));
        }
        let has_secret = self.secret.is_some() || !self.tenant_secrets.is_empty();
        match (template.uses_secret(), has_secret) {
            (true, false) => Err(invalid(
                setting("secret"),
                "is required: url_template uses {secret} (or set tenant_secrets)",
            )),
            (false, true) => Err(invalid(
                setting("secret"),
                "is set but url_template has no {secret} placeholder",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::Figment;

    use crate::config::{ConfigError, Settings};

    fn load(configure: impl FnOnce(Figment) -> Figment) -> Result<Settings, ConfigError> {
        Settings::from_figment(configure(
            Settings::defaults().merge(("kafka.bootstrap_servers", "127.0.0.1:9092")),
        ))
    }

    fn error_of(configure: impl FnOnce(Figment) -> Figment) -> String {
        load(configure).expect_err("invalid").to_string()
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let s = load(|f| f).expect("defaults load");
        assert_eq!(s.recordings.group_id, "callstream-recordings");
        assert_eq!(
            s.recordings.store.dir,
            std::path::PathBuf::from("recordings")
        );
        assert!(!s.recordings.allow_private_targets);
        assert!(s.recordings.templates.is_empty());
        assert_eq!(s.recordings.concurrency, 8);
    }

    #[test]
    fn templates_are_keyed_by_provider_and_checked() {
        let s = load(|f| {
            f.merge((
                "recordings.templates.telecmi.url_template",
                "https://rest.telecmi.com/v2/play?appid={tenant}&file={file_name}&secret={secret}",
            ))
            .merge(("recordings.templates.telecmi.secret", "s3cret"))
        })
        .expect("valid template");
        assert_eq!(s.recordings.templates.len(), 1);
        assert!(!format!("{s:?}").contains("s3cret"), "secrets never print");

        let e = error_of(|f| {
            f.merge((
                "recordings.templates.xarios.url_template",
                "https://x.example/rec/{id}?key={secret}",
            ))
        });
        assert!(e.contains("recordings.templates.xarios.secret"), "{e}");
        let e = error_of(|f| {
            f.merge((
                "recordings.templates.xarios.url_template",
                "https://x.example/rec/{ids}",
            ))
        });
        assert!(
            e.contains("recordings.templates.xarios.url_template"),
            "{e}"
        );
        let e = error_of(|f| f.merge(("recordings.templates.nobody.url_template", "x")));
        assert!(e.contains("nobody"), "{e}");
    }

    #[test]
    fn private_templates_need_a_host_no_value_can_change() {
        let pbx = |template: &'static str| {
            move |f: Figment| {
                f.merge(("recordings.allow_private_templates", true))
                    .merge(("recordings.templates.xarios.url_template", template))
            }
        };
        load(pbx("http://10.1.2.3:8080/rec/{tenant}/{id}")).expect("a fixed host");
        let e = error_of(pbx("http://{tenant}.pbx.internal/rec/{id}"));
        assert!(
            e.contains("recordings.templates.xarios.url_template") && e.contains("host"),
            "{e}"
        );
        // Without the private allowance the same template is fine: the
        // guard refuses whatever non-public host a value would make.
        load(|f| {
            f.merge((
                "recordings.templates.xarios.url_template",
                "http://{tenant}.pbx.example/rec/{id}",
            ))
        })
        .expect("guarded");
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: [(&str, Figment); 6] = [
            (
                "recordings.max_bytes",
                Figment::new().merge(("recordings.max_bytes", 0)),
            ),
            (
                "recordings.concurrency",
                Figment::new().merge(("recordings.concurrency", 0)),
            ),
            (
                "recordings.max_backoff_ms",
                Figment::new().merge(("recordings.max_backoff_ms", 10)),
            ),
            (
                "recordings.store.bucket",
                Figment::new().merge(("recordings.store.kind", "s3")),
            ),
            (
                "recordings.store.endpoint",
                Figment::new()
                    .merge(("recordings.store.kind", "s3"))
                    .merge(("recordings.store.bucket", "b"))
                    .merge(("recordings.store.endpoint", "http://minio:9000")),
            ),
            (
                "recordings.not_ready_retry_secs",
                Figment::new().merge(("recordings.not_ready_retry_secs", 86_400)),
            ),
        ];
        for (setting, overrides) in cases {
            let e = error_of(|f| f.merge(overrides));
            assert!(e.contains(setting), "{setting}: {e}");
        }
    }
}
