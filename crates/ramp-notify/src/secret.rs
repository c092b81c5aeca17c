//! Where channel secrets come from: environment variables or files the plan names, read by
//! the server when a rollout starts. A secret's value never appears in an error, a log line,
//! an event or the API.

use ramp_core::plan::Secret;

/// Why a secret could not be read (its value never appears here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or empty).
    #[error("environment variable {0} is not set")]
    NotSet(String),
    /// The file could not be read (or is empty).
    #[error("cannot read secret file {path}: {error}")]
    File {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
}

/// Reads secrets.
pub trait Secrets: Send + Sync {
    /// The secret's value, trailing newline removed.
    fn read(&self, s: &Secret) -> Result<String, SecretError>;
}

/// The process's environment and the file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct Process;

impl Secrets for Process {
    fn read(&self, s: &Secret) -> Result<String, SecretError> {
        match s {
            Secret::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim_end_matches(['\r', '\n']).to_string()),
                _ => Err(SecretError::NotSet(name.clone())),
            },
            Secret::File(path) => match std::fs::read_to_string(path) {
                Ok(v) if !v.trim().is_empty() => Ok(v.trim_end_matches(['\r', '\n']).to_string()),
                Ok(_) => Err(SecretError::File {
                    path: path.clone(),
                    error: "it is empty".into(),
                }),
                Err(e) => Err(SecretError::File {
                    path: path.clone(),
                    error: e.kind().to_string(),
                }),
            },
        }
    }
}

/// Secrets from a fixed list (tests, `ramp demo`).
#[derive(Clone, Debug, Default)]
pub struct Fixed(pub Vec<(Secret, String)>);

impl Secrets for Fixed {
    fn read(&self, s: &Secret) -> Result<String, SecretError> {
        self.0
            .iter()
            .find(|(k, _)| k == s)
            .map(|(_, v)| v.clone())
            .or_else(|| Process.read(s).ok())
            .ok_or_else(|| match s {
                Secret::Env(n) => SecretError::NotSet(n.clone()),
                Secret::File(p) => SecretError::File {
                    path: p.clone(),
                    error: "not found".into(),
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_secret_names_its_source_and_never_a_value() {
        let e = Process
            .read(&Secret::Env("RAMP_TEST_SURELY_UNSET_VARIABLE".into()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable RAMP_TEST_SURELY_UNSET_VARIABLE is not set"
        );
        let dir = std::env::temp_dir().join(format!("ramp-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cr3t\n").unwrap();
        let path = dir.to_string_lossy().to_string();
        assert_eq!(Process.read(&Secret::File(path.clone())).unwrap(), "s3cr3t");
        std::fs::write(&dir, "\n").unwrap();
        let e = Process.read(&Secret::File(path)).unwrap_err().to_string();
        assert!(e.contains("empty") && !e.contains("s3cr3t"), "{e}");
        let _ = std::fs::remove_file(dir);
    }
}
