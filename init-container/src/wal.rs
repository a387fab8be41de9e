//! WAL archiving to object storage: `ordinal-init wal-push` is
//! PostgreSQL's `archive_command`, `ordinal-init wal-fetch` its
//! `restore_command`, both inside the pod's own image (no sidecar).
//!
//! Where: `ORDINAL_BACKUP_URL` names the store and prefix
//! (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`), read by the
//! `object_store` crate; `ORDINAL_BACKUP_OPTIONS` adds its options
//! (`aws_endpoint=http://…,aws_region=…`), and every file in
//! `ORDINAL_BACKUP_CREDENTIALS_DIR` (a mounted Secret) is one more option,
//! named by the file (`aws_access_key_id`, `aws_secret_access_key`…), so
//! that credentials never sit in the environment or in a command line.
//!
//! What: each file is compressed with zstd (with the frame's checksum, so
//! a corrupt object is refused when it is read back) under
//! `PREFIX/wal/TTTTTTTTXXXXXXXX/NAME.zst` for a segment (the first 16
//! digits group a timeline's 4 GiB), `PREFIX/wal/NAME.zst` for history and
//! backup-label files. A push never overwrites: the object is created only
//! if absent, and if it exists already the push succeeds when its content
//! is the same file (PostgreSQL retries an archive_command that failed
//! after the upload) and fails loudly when it differs (two clusters, or
//! two timelines, writing the same prefix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

/// zstd level: WAL compresses well at the fast levels; higher ones cost
/// the archiver time for little.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "no backup destination: ORDINAL_BACKUP_URL is not set (spec.backup names the object store)"
    )]
    NoDestination,
    #[error("ORDINAL_BACKUP_OPTIONS: {0:?} is not key=value")]
    BadOption(String),
    #[error("cannot read the credentials in {dir}: {source}")]
    Credentials {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("backup destination {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} is not a WAL file name")]
    BadName { name: String },
    #[error("cannot upload {name} to {location}: {source}")]
    Upload {
        name: String,
        location: String,
        source: object_store::Error,
    },
    #[error("cannot download {location}: {source}")]
    Download {
        location: String,
        source: object_store::Error,
    },
    #[error(
        "{location} exists already with other content than {path}: refusing to overwrite an archived WAL file \
         (does another cluster, or an older timeline of this one, archive to the same prefix?)"
    )]
    Differs { location: String, path: PathBuf },
    #[error("{location} is corrupt: {source}")]
    Corrupt {
        location: String,
        source: std::io::Error,
    },
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Uploaded: the object's size, compressed.
    Uploaded { bytes: usize },
    /// The same content was archived before (a retry).
    AlreadyArchived,
}

/// The archive: an object store and the prefix under it.
pub struct Archive {
    store: Box<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl Archive {
    /// The archive the environment names (see the module's comment).
    pub fn from_env() -> Result<Self, WalError> {
        use ordinal_crds::names::env as e;
        Self::from_vars(e::BACKUP_URL, e::BACKUP_OPTIONS, e::BACKUP_CREDENTIALS_DIR)
    }

    /// The archive a new cluster is restored from
    /// (`spec.bootstrap.recovery.source`), named the same way by
    /// `ORDINAL_RECOVERY_URL`, `_OPTIONS` and `_CREDENTIALS_DIR`.
    pub fn recovery_from_env() -> Result<Self, WalError> {
        use ordinal_crds::names::env as e;
        Self::from_vars(
            e::RECOVERY_URL,
            e::RECOVERY_OPTIONS,
            e::RECOVERY_CREDENTIALS_DIR,
        )
    }

    fn from_vars(url: &str, options: &str, credentials: &str) -> Result<Self, WalError> {
        let url = std::env::var(url).map_err(|_| WalError::NoDestination)?;
        let mut options = parse_options(&std::env::var(options).unwrap_or_default())?;
        if let Ok(dir) = std::env::var(credentials) {
            options.extend(read_credentials(Path::new(&dir))?);
        }
        Self::open(&url, options)
    }

    /// The store and prefix, as a URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The archive at `url` with `options` (object_store's keys).
    pub fn open(url: &str, options: HashMap<String, String>) -> Result<Self, WalError> {
        let store_err = |source| WalError::Store {
            url: url.to_owned(),
            source,
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            store_err(object_store::Error::Generic {
                store: "url",
                source: Box::new(e),
            })
        })?;
        let (store, prefix) = object_store::parse_url_opts(&parsed, options).map_err(store_err)?;
        Ok(Self {
            store,
            prefix,
            url: url.to_owned(),
        })
    }

    /// Where WAL file `name` is kept.
    pub fn location(&self, name: &str) -> Result<ObjectPath, WalError> {
        let object = format!("{name}.zst");
        let parts: Vec<&str> = if is_segment(name) {
            vec!["wal", &name[..16], &object]
        } else if is_other_wal_file(name) {
            vec!["wal", &object]
        } else {
            return Err(WalError::BadName {
                name: name.to_owned(),
            });
        };
        Ok(self
            .prefix
            .parts()
            .chain(parts.into_iter().map(object_store::path::PathPart::from))
            .collect())
    }

    /// The object at `parts` under the prefix.
    pub fn object(&self, parts: &[&str]) -> ObjectPath {
        self.prefix
            .parts()
            .chain(parts.iter().map(|p| object_store::path::PathPart::from(*p)))
            .collect()
    }

    /// The store itself.
    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// Whether WAL file `name` is archived.
    pub async fn contains(&self, name: &str) -> Result<bool, WalError> {
        let location = self.location(name)?;
        match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(WalError::Download {
                location: self.describe(&location),
                source,
            }),
        }
    }

    /// `location` as a person reads it: the archive's URL and the rest.
    pub fn describe(&self, location: &ObjectPath) -> String {
        format!(
            "{}/{}",
            self.url.trim_end_matches('/'),
            strip(&self.prefix, location)
        )
    }

    /// Archives the file at `path` as WAL file `name`.
    pub async fn push(&self, path: &Path, name: &str) -> Result<Pushed, WalError> {
        let location = self.location(name)?;
        let content = std::fs::read(path).map_err(|source| WalError::Read {
            path: path.to_owned(),
            source,
        })?;
        let compressed = compress(&content).map_err(|source| WalError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bytes = compressed.len();
        let create = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&location, PutPayload::from(compressed), create)
            .await
        {
            Ok(_) => Ok(Pushed::Uploaded { bytes }),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let archived = self.fetch_bytes(&location).await?;
                if archived == content {
                    Ok(Pushed::AlreadyArchived)
                } else {
                    Err(WalError::Differs {
                        location: self.describe(&location),
                        path: path.to_owned(),
                    })
                }
            }
            Err(source) => Err(WalError::Upload {
                name: name.to_owned(),
                location: self.describe(&location),
                source,
            }),
        }
    }

    /// Restores WAL file `name` to `dest`. Ok(false): the archive has no
    /// such file (the end of the archived WAL, for PostgreSQL).
    pub async fn fetch(&self, name: &str, dest: &Path) -> Result<bool, WalError> {
        let location = self.location(name)?;
        let content = match self.fetch_bytes(&location).await {
            Ok(content) => content,
            Err(WalError::Download {
                source: object_store::Error::NotFound { .. },
                ..
            }) => return Ok(false),
            Err(e) => return Err(e),
        };
        // Written aside and renamed: PostgreSQL must never read half a file.
        let partial = dest.with_extension("ordinal-partial");
        let write_err = |source| WalError::Write {
            path: dest.to_owned(),
            source,
        };
        std::fs::write(&partial, &content).map_err(write_err)?;
        std::fs::rename(&partial, dest).map_err(write_err)?;
        Ok(true)
    }

    async fn fetch_bytes(&self, location: &ObjectPath) -> Result<Vec<u8>, WalError> {
        let download = |source| WalError::Download {
            location: self.describe(location),
            source,
        };
        let compressed = self
            .store
            .get(location)
            .await
            .map_err(download)?
            .bytes()
            .await
            .map_err(download)?;
        zstd::stream::decode_all(compressed.as_ref()).map_err(|source| WalError::Corrupt {
            location: self.describe(location),
            source,
        })
    }
}

fn strip(prefix: &ObjectPath, location: &ObjectPath) -> String {
    location
        .prefix_match(prefix)
        .map(|parts| {
            parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|| location.to_string())
}

fn compress(content: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder =
        zstd::stream::Encoder::new(Vec::with_capacity(content.len() / 4), ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    std::io::Write::write_all(&mut encoder, content)?;
    encoder.finish()
}

/// A WAL segment's name: 24 hexadecimal digits.
fn is_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A timeline history file (`00000002.history`), a backup label
/// (`…24 digits….00000028.backup`) or a partial segment (`….partial`).
fn is_other_wal_file(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match name.split_once('.') {
        Some((tli, "history")) => hex(tli, 8),
        Some((segment, "partial")) => hex(segment, 24),
        Some((segment, rest)) => {
            hex(segment, 24)
                && rest
                    .strip_suffix(".backup")
                    .is_some_and(|offset| hex(offset, 8))
        }
        None => false,
    }
}

fn parse_options(text: &str) -> Result<HashMap<String, String>, WalError> {
    text.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            o.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| WalError::BadOption(o.to_owned()))
        })
        .collect()
}

/// Every regular file of `dir` as an option: its name, its content. The
/// `..data` links and dot files a mounted Secret carries are skipped.
fn read_credentials(dir: &Path) -> Result<HashMap<String, String>, WalError> {
    let err = |source| WalError::Credentials {
        dir: dir.to_owned(),
        source,
    };
    let mut options = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let value = std::fs::read_to_string(entry.path()).map_err(err)?;
        options.insert(name, value.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (tempfile::TempDir, Archive) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/cluster-a", dir.path().display());
        std::fs::create_dir_all(dir.path().join("cluster-a")).unwrap();
        (dir, Archive::open(&url, HashMap::new()).unwrap())
    }

    #[test]
    fn names_and_where_they_go() {
        let (_dir, archive) = local();
        let segment = archive.location("000000010000000A000000FE").unwrap();
        assert!(
            segment
                .to_string()
                .ends_with("cluster-a/wal/000000010000000A/000000010000000A000000FE.zst"),
            "{segment}"
        );
        let history = archive.location("00000002.history").unwrap();
        assert!(
            history
                .to_string()
                .ends_with("cluster-a/wal/00000002.history.zst")
        );
        assert!(
            archive
                .location("000000010000000000000003.00000028.backup")
                .is_ok()
        );
        assert!(archive.location("000000010000000000000003.partial").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            "00000001000000000000000",
            "0000000100000000000000XY",
            "x.history",
        ] {
            assert!(
                matches!(archive.location(bad), Err(WalError::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn options_and_credentials() {
        let options =
            parse_options("aws_endpoint=http://198.18.255.1:9000, aws_region = us-east-1,")
                .unwrap();
        assert_eq!(options["aws_endpoint"], "http://198.18.255.1:9000");
        assert_eq!(options["aws_region"], "us-east-1");
        assert!(matches!(
            parse_options("aws_region"),
            Err(WalError::BadOption(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("aws_secret_access_key"), "s3cr3t\n").unwrap();
        std::fs::create_dir(dir.path().join("..2026_12_05")).unwrap();
        std::fs::write(dir.path().join(".hidden"), "x").unwrap();
        let creds = read_credentials(dir.path()).unwrap();
        assert_eq!(creds.len(), 1);
        assert_eq!(creds["aws_secret_access_key"], "s3cr3t");
    }

    #[tokio::test]
    async fn a_push_is_idempotent_and_never_overwrites() {
        let (dir, archive) = local();
        let name = "000000010000000000000001";
        let wal = dir.path().join(name);
        let content: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&wal, &content).unwrap();

        let first = archive.push(&wal, name).await.unwrap();
        assert!(matches!(first, Pushed::Uploaded { bytes } if bytes < content.len() / 10));
        // PostgreSQL retries after a failure it saw: the same file passes.
        assert_eq!(
            archive.push(&wal, name).await.unwrap(),
            Pushed::AlreadyArchived
        );
        // Other content under the same name is refused, and kept as it was.
        std::fs::write(&wal, b"another timeline").unwrap();
        assert!(matches!(
            archive.push(&wal, name).await,
            Err(WalError::Differs { .. })
        ));

        let restored = dir.path().join("RECOVERYXLOG");
        assert!(archive.fetch(name, &restored).await.unwrap());
        assert_eq!(std::fs::read(&restored).unwrap(), content);
        // Missing: not an error, the end of the archive.
        assert!(
            !archive
                .fetch("000000010000000000000002", &restored)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_corrupt_object_is_refused() {
        let (dir, archive) = local();
        let name = "000000010000000000000001";
        let wal = dir.path().join(name);
        std::fs::write(&wal, vec![7u8; 1 << 16]).unwrap();
        archive.push(&wal, name).await.unwrap();
        let stored = dir
            .path()
            .join("cluster-a/wal/0000000100000000/000000010000000000000001.zst");
        let mut bytes = std::fs::read(&stored).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&stored, bytes).unwrap();
        let restored = dir.path().join("RECOVERYXLOG");
        assert!(matches!(
            archive.fetch(name, &restored).await,
            Err(WalError::Corrupt { .. })
        ));
        assert!(!restored.exists());
    }
}
