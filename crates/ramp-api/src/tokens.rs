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

/// One line of the tokens file, as `ramp token list` shows it (never the hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    /// The token's name (who acted, in the journal).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The tokens in the file, in file order.
pub fn list_tokens(path: &Path) -> Result<Vec<TokenEntry>, TokensFileError> {
    Ok(entries(path)?.into_iter().map(|(_, e, _)| e).collect())
}

/// Every token line: its text, name and role, and whether it parses (comments and blank lines
/// are kept as they are by a rewrite).
fn entries(path: &Path) -> Result<Vec<(String, TokenEntry, usize)>, TokensFileError> {
    // Checks every line first: a rewrite must not silently drop a line it cannot read.
    read_tokens(path)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TokensFileError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    Ok(text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                return None;
            }
            let mut parts = t.split_whitespace();
            let name = parts.next()?.to_string();
            let role = parts.next()?.parse().ok()?;
            Some((line.to_string(), TokenEntry { name, role }, i))
        })
        .collect())
}

/// Holds `<path>.lock` exclusively while the tokens file is changed, so that two `ramp token`
/// commands never lose each other's change.
fn lock(path: &Path) -> Result<std::fs::File, TokensFileError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let io = |source| TokensFileError::Io {
        path: lock_path.display().to_string(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(&lock_path).map_err(io)?;
    f.lock().map_err(io)?;
    Ok(f)
}

/// Removes every token named `name` from the file (rewritten whole: a temporary file, fsync,
/// rename); a running server refuses them from its next request. Answers how many were
/// removed: 0 means there was no such token and the file is unchanged.
pub fn revoke_token(path: &Path, name: &str) -> Result<usize, TokensFileError> {
    let _lock = lock(path)?;
    let io = |source| TokensFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(io(source)),
    };
    let doomed: std::collections::HashSet<usize> = entries(path)?
        .into_iter()
        .filter(|(_, e, _)| e.name == name)
        .map(|(_, _, i)| i)
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    let kept: String = text
        .lines()
        .enumerate()
        .filter(|(i, _)| !doomed.contains(i))
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".new");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(kept.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(doomed.len())
}

/// Appends a new token's hash to the file (created with mode 0600) and returns the token,
/// which is shown only now and stored nowhere. A name already in the file is refused (revoke
/// it first): the journal names who acted, and two tokens with one name could not be told
/// apart.
pub fn add_token(path: &Path, name: &str, role: Role) -> Result<String, TokensFileError> {
    let _lock = lock(path)?;
    let io = |source| TokensFileError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(line) = entries(path)?
        .into_iter()
        .find(|(_, e, _)| e.name == name)
        .map(|(_, _, i)| i + 1)
    {
        return Err(TokensFileError::Line {
            path: path.display().to_string(),
            line,
            message: format!(
                "a token named {name:?} exists already; revoke it first (`ramp token revoke {name}`)"
            ),
        });
    }
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
    fn revoked_tokens_stop_working_and_the_rest_of_the_file_stays() {
        let dir = std::env::temp_dir().join(format!("ramp-revoke-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.db.tokens");
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "# ops tokens\n").unwrap();
        let source = TokenSource::file(path.clone()).unwrap();
        let admin = add_token(&path, "admin", Role::Admin).unwrap();
        let bob = add_token(&path, "bob", Role::Viewer).unwrap();
        let again = add_token(&path, "bob", Role::Admin).unwrap_err();
        assert!(again.to_string().contains("exists already"), "{again}");
        assert_eq!(
            list_tokens(&path).unwrap(),
            vec![
                TokenEntry {
                    name: "admin".into(),
                    role: Role::Admin
                },
                TokenEntry {
                    name: "bob".into(),
                    role: Role::Viewer
                },
            ]
        );
        assert!(source.current().check(&bob).is_some());
        assert_eq!(revoke_token(&path, "bob").unwrap(), 1);
        assert_eq!(revoke_token(&path, "bob").unwrap(), 0, "already gone");
        assert_eq!(source.current().check(&bob), None, "refused at once");
        assert!(source.current().check(&admin).is_some());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# ops tokens\n"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A file with a line it cannot read is not rewritten (nothing is dropped silently).
        std::fs::write(&path, format!("{text}broken\n")).unwrap();
        assert!(revoke_token(&path, "admin").is_err());
        assert!(std::fs::read_to_string(&path).unwrap().contains("admin"));
        let _ = std::fs::remove_dir_all(&dir);
    }

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
