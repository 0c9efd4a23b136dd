//! The object store holding the audio (`object_store`: a local directory or
//! an S3-compatible bucket), and the manifest kept beside each audio object.
//!
//! The manifest (`<base>.manifest.json`) is written after its audio, and
//! says which handle and revision the audio came from plus the exact
//! recordings event published for it. Its presence is what "already
//! archived" means: audio without a manifest (a crash between the two) is
//! fetched again and overwritten. Each handle gets its own audio object, so
//! a new link never overwrites audio an earlier event points to. Both writes
//! are atomic (a multipart upload completes, or a local file is renamed into
//! place, only when whole), and in the local directory both files and their
//! directory are fsynced before the event is published.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutPayload};
use reqwest::Url;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use callstream_schemas::recording::RecordingArchived;

use super::settings::{StoreKind, StoreSettings};

/// What is kept beside each audio object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// [`super::source::Handle::digest`] of the handle the audio came from.
    pub(crate) source_sha256: String,
    /// The recordings event published for it, published again as it is
    /// when the same revision of the event comes back.
    pub record: RecordingArchived,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create `{dir}` (recordings.store.dir): {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("object store (recordings.store): {0}")]
    Store(#[from] object_store::Error),
}

/// The configured store, and how its objects are named outside.
pub(crate) struct Archive {
    store: Arc<dyn ObjectStore>,
    /// `Some` for the local directory: fsync and `file://` locations.
    local: Option<Arc<LocalFileSystem>>,
    /// `s3://bucket/` for S3.
    s3_base: Option<String>,
}

impl Archive {
    pub fn open(settings: &StoreSettings) -> Result<Archive, OpenError> {
        match settings.kind {
            StoreKind::Local => {
                std::fs::create_dir_all(&settings.dir).map_err(|source| OpenError::Dir {
                    dir: settings.dir.clone(),
                    source,
                })?;
                let local = Arc::new(LocalFileSystem::new_with_prefix(&settings.dir)?);
                Ok(Archive {
                    store: local.clone(),
                    local: Some(local),
                    s3_base: None,
                })
            }
            StoreKind::S3 => {
                let bucket = settings.bucket.clone().unwrap_or_default();
                // Unset settings fall back to AWS_* variables and the instance role.
                let mut builder = AmazonS3Builder::from_env()
                    .with_bucket_name(&bucket)
                    .with_allow_http(settings.allow_http);
                if let Some(region) = &settings.region {
                    builder = builder.with_region(region);
                }
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                if let (Some(id), Some(secret)) =
                    (&settings.access_key_id, &settings.secret_access_key)
                {
                    builder = builder
                        .with_access_key_id(id.expose_secret())
                        .with_secret_access_key(secret.expose_secret());
                }
                Ok(Archive {
                    store: Arc::new(builder.build()?),
                    local: None,
                    s3_base: Some(format!("s3://{bucket}/")),
                })
            }
        }
    }

    /// Where objects go, for the start-up log line.
    pub fn describe(&self) -> String {
        match (&self.local, &self.s3_base) {
            (Some(local), _) => local
                .path_to_filesystem(&Path::from(""))
                .ok()
                .and_then(|p| Url::from_directory_path(p).ok())
                .map_or_else(|| "file://".into(), |u| u.to_string()),
            (None, Some(base)) => base.clone(),
            (None, None) => String::new(),
        }
    }

    /// The public location of `key`: `file:///abs/path` or `s3://bucket/key`.
    pub fn location(&self, key: &Path) -> String {
        if let Some(local) = &self.local {
            if let Some(url) = local
                .path_to_filesystem(key)
                .ok()
                .and_then(|p| Url::from_file_path(p).ok())
            {
                return url.to_string();
            }
        }
        format!("{}{key}", self.s3_base.as_deref().unwrap_or_default())
    }

    /// The manifest at `key`; `None` if there is none, or if it cannot be
    /// read as one (then the audio is fetched again and both overwritten).
    pub async fn manifest(&self, key: &Path) -> Result<Option<Manifest>, object_store::Error> {
        let bytes = match self.store.get(key).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice(&bytes) {
            Ok(manifest) => Ok(Some(manifest)),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "unreadable manifest: archiving again");
                Ok(None)
            }
        }
    }

    pub async fn put_manifest(
        &self,
        key: &Path,
        manifest: &Manifest,
    ) -> Result<(), object_store::Error> {
        let bytes =
            serde_json::to_vec_pretty(manifest).map_err(|e| object_store::Error::Generic {
                store: "manifest",
                source: Box::new(e),
            })?;
        self.store.put(key, PutPayload::from(bytes)).await?;
        self.sync(key).await
    }

    /// Starts an upload that becomes visible at `key` only when completed.
    pub async fn upload(
        &self,
        key: &Path,
    ) -> Result<Box<dyn MultipartUpload>, object_store::Error> {
        self.store.put_multipart(key).await
    }

    /// Local directory: fsyncs the file at `key` and its directory, so what
    /// the published event points to survives a power cut. (An S3 upload is
    /// durable once acknowledged.)
    pub async fn sync(&self, key: &Path) -> Result<(), object_store::Error> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let file = local.path_to_filesystem(key)?;
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::File::open(&file)?.sync_all()?;
            if let Some(dir) = file.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        synced.map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })
    }
}
