//! Credentials, read from the Secrets mounted as files (never env vars).

use std::path::{Path, PathBuf};

use ordinal_crds::names;

#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: is the Secret mounted?")]
pub struct CredentialsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The superuser's password and the replication role's name and password.
/// Debug never prints the passwords.
pub struct Credentials {
    pub superuser_password: String,
    pub replication_user: String,
    pub replication_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("replication_user", &self.replication_user)
            .finish_non_exhaustive()
    }
}

fn read(path: PathBuf) -> Result<String, CredentialsError> {
    std::fs::read_to_string(&path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|source| CredentialsError { path, source })
}

impl Credentials {
    pub fn read(superuser_dir: &Path, replication_dir: &Path) -> Result<Self, CredentialsError> {
        let (replication_user, replication_password) = Self::replication(replication_dir)?;
        Ok(Self {
            superuser_password: read(superuser_dir.join(names::SECRET_PASSWORD_KEY))?,
            replication_user,
            replication_password,
        })
    }

    /// The replication role's name and password alone (a backup Job
    /// mounts no superuser Secret).
    pub fn replication(replication_dir: &Path) -> Result<(String, String), CredentialsError> {
        let user = match read(replication_dir.join(names::SECRET_USERNAME_KEY)) {
            Ok(user) if !user.is_empty() => user,
            _ => names::REPLICATION_USER_NAME.to_owned(),
        };
        Ok((
            user,
            read(replication_dir.join(names::SECRET_PASSWORD_KEY))?,
        ))
    }

    /// Where initdb reads the superuser's password from.
    pub fn superuser_password_file(superuser_dir: &Path) -> PathBuf {
        superuser_dir.join(names::SECRET_PASSWORD_KEY)
    }
}
