//! The tokens file (`NAME ROLE SHA256` per line, `#` comments) and the live set of tokens the
//! API checks against: re-read whenever the file changes, so `ramp token add` takes effect
//! without a restart.

use super::auth::{Role, Tokens};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why the tokens file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    /// It could not be read or written.
    #[error("{path}: error: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not `NAME ROLE SHA256`.
    #[error("{path}:{line}:1: error: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Reads a tokens file. A missing file holds no tokens.
pub fn read_tokens(path: &Path) -> Result<Tokens, TokensFileError> {
    let mut tokens = Tokens::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(tokens),
        Err(source) => {
            return Err(TokensFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |message: &str| TokensFileError::Line {
            path: path.display().to_string(),
            line: i + 1,
            message: message.to_string(),
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = parts[..] else {
            return Err(bad("expected `NAME ROLE SHA256`"));
        };
        let role: Role = role
            .parse()
            .map_err(|_| bad("role must be viewer, operator, admin or ingest"))?;
        tokens
            .add_hashed(name, role, hash)
            .map_err(|e| bad(&e.to_string()))?;
    }
    Ok(tokens)
}

/// Appends a new token's hash to the file (created with mode 0600) and returns the token,
/// which is shown only now and stored nowhere.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, TokensFileError> {
    let io = |source| TokensFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let token = Tokens::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    writeln!(f, "{name} {} {}", role.name(), Tokens::hash(&token)).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(token)
}

/// What identifies a version of the file: a change of any of these means it was rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    inode: u64,
}

fn version(path: &Path) -> Option<Version> {
    let m = std::fs::metadata(path).ok()?;
    Some(Version {
        len: m.len(),
        modified: m.modified().ok(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&m),
    })
}

/// The tokens the API checks: fixed, or a file re-read when it changes.
#[derive(Clone, Debug)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    current: RwLock<(Option<Version>, Arc<Tokens>)>,
}

impl TokenSource {
    /// These tokens, for ever.
    pub fn fixed(tokens: Tokens) -> Self {
        TokenSource {
            inner: Arc::new(Inner {
                path: None,
                current: RwLock::new((None, Arc::new(tokens))),
            }),
        }
    }

    /// The tokens in `path`, read now and again whenever the file changes. A file that
    /// cannot be read now is an error; one that turns unreadable later keeps the last good
    /// set (a half-written file must not lock everyone out).
    pub fn file(path: PathBuf) -> Result<Self, TokensFileError> {
        let v = version(&path);
        let tokens = read_tokens(&path)?;
        Ok(TokenSource {
            inner: Arc::new(Inner {
                path: Some(path),
                current: RwLock::new((v, Arc::new(tokens))),
            }),
        })
    }

    /// The current tokens, re-reading the file first if it changed since it was last read
    /// (a `stat` per call).
    pub fn current(&self) -> Arc<Tokens> {
        if let Some(path) = &self.inner.path {
            let now = version(path);
            let stale = self
                .inner
                .current
                .read()
                .map(|c| c.0 != now)
                .unwrap_or(true);
            if stale
                && let Ok(tokens) = read_tokens(path)
                && let Ok(mut c) = self.inner.current.write()
            {
                *c = (now, Arc::new(tokens));
            }
        }
        self.inner
            .current
            .read()
            .map(|c| c.1.clone())
            .unwrap_or_else(|e| e.into_inner().1.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_added_to_the_file_works_at_once() {
        let dir = std::env::temp_dir().join(format!(
            "ramp-tokens-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.db.tokens");
        let _ = std::fs::remove_file(&path);
        let source = TokenSource::file(path.clone()).unwrap();
        assert!(source.current().is_empty());
        let first = add_token(&path, "admin", Role::Admin).unwrap();
        assert_eq!(
            source.current().check(&first).map(|(n, _)| n),
            Some("admin".to_string())
        );
        let second = add_token(&path, "alice", Role::Viewer).unwrap();
        assert_eq!(
            source.current().check(&second),
            Some(("alice".into(), Role::Viewer))
        );
        // A file broken later keeps the last good set.
        std::fs::write(&path, "garbage line\n").unwrap();
        assert!(source.current().check(&first).is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::remove_file(&path);
            add_token(&path, "x", Role::Ingest).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_lines_name_their_position() {
        let dir = std::env::temp_dir().join(format!("ramp-tokens-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t");
        std::fs::write(&path, "# comment\n\nalice viewer\n").unwrap();
        let err = read_tokens(&path).unwrap_err().to_string();
        assert!(
            err.ends_with(":3:1: error: expected `NAME ROLE SHA256`"),
            "{err}"
        );
        std::fs::write(&path, format!("bob wizard {}\n", "a".repeat(64))).unwrap();
        assert!(
            read_tokens(&path)
                .unwrap_err()
                .to_string()
                .contains("role must be")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
