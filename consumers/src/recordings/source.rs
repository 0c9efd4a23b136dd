//! From an event to what can be downloaded: its media handles (a URL, a
//! file name, ids), the redacted form of a handle that may be published,
//! and the object keys the audio is stored under.

use std::fmt::Write as _;

use reqwest::Url;
use sha2::{Digest, Sha256};

use callstream_schemas::recording::{Media, MediaSource};
use callstream_schemas::{Event, MediaRef};

/// Replaces a credential wherever it could show up.
pub const REDACTED: &str = "REDACTED";

/// A provider's handle of one recording or voicemail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handle {
    Url(String),
    FileName(String),
    Id(String),
}

/// One piece of media of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub media: Media,
    pub index: u32,
    pub handle: Handle,
}

impl Item {
    /// `recording[0]`, for logs and dead letters.
    pub fn label(&self) -> String {
        format!("{}[{}]", self.media.as_str(), self.index)
    }
}

/// The event's media: a URL when there is one, else a file name, else
/// each id. A media reference with none of them (a TeleCMI `record: true`
/// without a file name) has nothing to fetch.
pub fn items(event: &Event) -> Vec<Item> {
    let mut out = Vec::new();
    for (media, reference) in [
        (Media::Recording, &event.recording),
        (Media::Voicemail, &event.voicemail),
    ] {
        let Some(MediaRef {
            url,
            file_name,
            ids,
            ..
        }) = reference
        else {
            continue;
        };
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        if let Some(url) = nonempty(url) {
            out.push(Item {
                media,
                index: 0,
                handle: Handle::Url(url),
            });
        } else if let Some(file_name) = nonempty(file_name) {
            out.push(Item {
                media,
                index: 0,
                handle: Handle::FileName(file_name),
            });
        } else {
            let ids = ids.iter().filter(|id| !id.trim().is_empty());
            for (index, id) in ids.enumerate() {
                out.push(Item {
                    media,
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    handle: Handle::Id(id.clone()),
                });
            }
        }
    }
    out
}

impl Handle {
    /// The handle as it may be published: URLs lose user info, fragment and
    /// every query value (signed links carry tokens there).
    pub fn source(&self) -> MediaSource {
        match self {
            Handle::Url(raw) => MediaSource::Url {
                url: Url::parse(raw).map_or_else(|_| REDACTED.to_string(), |u| redact_url(&u)),
            },
            Handle::FileName(file_name) => MediaSource::FileName {
                file_name: file_name.clone(),
            },
            Handle::Id(id) => MediaSource::Id { id: id.clone() },
        }
    }

    /// Hex SHA-256 of the handle, to tell whether an update changed it.
    pub fn digest(&self) -> String {
        let (kind, value) = match self {
            Handle::Url(v) => ("url", v),
            Handle::FileName(v) => ("file_name", v),
            Handle::Id(v) => ("id", v),
        };
        hex(&Sha256::digest(format!("{kind}:{value}").as_bytes()))
    }

    /// The last path segment's extension (`mp3`), if it looks like one.
    fn extension(&self) -> Option<String> {
        let name = match self {
            Handle::Url(raw) => Url::parse(raw)
                .ok()?
                .path_segments()?
                .next_back()?
                .to_string(),
            Handle::FileName(name) => name.clone(),
            Handle::Id(_) => return None,
        };
        let (_, ext) = name.rsplit_once('.')?;
        let ok = (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| ext.to_ascii_lowercase())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `url` without user info, fragment or query values.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    if url.query().is_some() {
        let names: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        let mut pairs = url.query_pairs_mut();
        pairs.clear();
        for name in names {
            pairs.append_pair(&name, REDACTED);
        }
    }
    url.to_string()
}

/// A key segment made of `[A-Za-z0-9._-]` only, never `.` or `..`.
fn segment(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// The common start of an item's keys:
/// `[prefix/]<tenant>/<provider>/<yyyy>/<mm>/<dd>/<event_id>-<media>-<index>`,
/// dated by the call's start (`undated` without one), so that every
/// revision of an event finds the same manifest (`<base>.manifest.json`).
/// The audio goes to `<base>-<first 16 hex of the handle's digest>.<ext>`.
pub(crate) fn object_base(prefix: &str, event: &Event, item: &Item) -> String {
    let date = event.started_at.map_or_else(
        || "undated".to_string(),
        |t| t.format("%Y/%m/%d").to_string(),
    );
    let mut base = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        base.push_str(&segment(part));
        base.push('/');
    }
    let _ = write!(
        base,
        "{}/{}/{date}/{}-{}-{}",
        segment(&event.tenant),
        event.provider.as_str(),
        event.event_id,
        item.media.as_str(),
        item.index
    );
    base
}

/// The audio's file extension: from the served content type when it names
/// a known audio format, else from the handle, else `bin`.
pub fn extension(content_type: &str, handle: &Handle) -> String {
    let known = match content_type {
        "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg-3" => Some("mp3"),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Some("wav"),
        "audio/ogg" => Some("ogg"),
        "audio/opus" => Some("opus"),
        "audio/mp4" | "audio/m4a" | "audio/x-m4a" => Some("m4a"),
        "audio/aac" => Some("aac"),
        "audio/webm" => Some("webm"),
        "audio/flac" | "audio/x-flac" => Some("flac"),
        "audio/amr" => Some("amr"),
        _ => None,
    };
    known
        .map(str::to_string)
        .or_else(|| handle.extension())
        .unwrap_or_else(|| "bin".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_query_values_user_info_and_fragment() {
        let url = Url::parse("https://u:p@rec.example/r/1.mp3?sig=abc&expires=9#x").unwrap();
        assert_eq!(
            redact_url(&url),
            "https://rec.example/r/1.mp3?sig=REDACTED&expires=REDACTED"
        );
        let plain = Url::parse("https://rec.example/r/1.mp3").unwrap();
        assert_eq!(redact_url(&plain), "https://rec.example/r/1.mp3");
    }

    #[test]
    fn keys_are_safe_path_segments() {
        assert_eq!(segment("../etc"), "_.._etc");
        assert_eq!(segment("acme/x"), "acme_x");
        assert_eq!(segment(""), "_");
        assert_eq!(segment("2222223"), "2222223");
    }

    #[test]
    fn extension_prefers_the_content_type() {
        let url = Handle::Url("https://h/r/x.WAV?t=1".into());
        assert_eq!(extension("audio/mpeg", &url), "mp3");
        assert_eq!(extension("application/octet-stream", &url), "wav");
        assert_eq!(
            extension("binary/octet-stream", &Handle::Id("7".into())),
            "bin"
        );
        let odd = Handle::FileName("x.tar.gz/../../y".into());
        assert_eq!(extension("", &odd), "bin");
    }
}
