//! The audit key: the secret that chains audit records and signs checkpoints, kept outside
//! every database so that whoever can write a database cannot re-hash its chain.
//!
//! It comes from `BULKHEAD_AUDIT_KEY` (hex) when that is set, else from the key file
//! (`server { audit_key_file }`, default `DATA_DIR/audit.key`), which the server creates with
//! mode 0600 on first start. Each chain is keyed with a key of its own derived from it (so a
//! chain cannot pass for another environment's), and checkpoints with another. The key is never
//! printed, logged or stored in a database; its `Debug` shows nothing of it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The environment variable that holds the audit key, in hex; it takes precedence over the file.
pub const KEY_VAR: &str = "BULKHEAD_AUDIT_KEY";

/// The fewest key bytes accepted (and the size of a key the server creates).
const KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{KEY_VAR} is not a usable audit key: {0}")]
    Variable(&'static str),
    #[error("the audit key file {path} is not a usable key: {problem}")]
    Unusable {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("the audit key file {path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`", path = path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot read the audit key file {path}: {source}", path = path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the audit key file {path}: {source}", path = path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit key file {path} does not exist: verification needs the key the server chains records with (set {KEY_VAR}, or server {{ audit_key_file }} to where it is)", path = path.display())]
    Missing { path: PathBuf },
}

/// The audit key. Where it comes from is described by [`AuditKey::source`], never by its bytes.
#[derive(Clone)]
pub struct AuditKey {
    bytes: Vec<u8>,
    source: String,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditKey(from {})", self.source)
    }
}

impl AuditKey {
    /// The key as the server uses it: from [`KEY_VAR`], else the file at `path`, created with
    /// a new random key when it does not exist yet.
    pub fn for_server(path: &Path) -> Result<AuditKey, KeyError> {
        if let Some(key) = Self::from_variable()? {
            return Ok(key);
        }
        match read_file(path) {
            Err(KeyError::Missing { .. }) => create_file(path),
            other => other,
        }
    }

    /// The key as verification uses it: from [`KEY_VAR`], else the file at `path`, which must
    /// exist (verification never creates a key).
    pub fn existing(path: &Path) -> Result<AuditKey, KeyError> {
        match Self::from_variable()? {
            Some(key) => Ok(key),
            None => read_file(path),
        }
    }

    /// A key given as hex, as [`KEY_VAR`] holds it.
    pub fn from_hex(text: &str, source: impl Into<String>) -> Result<AuditKey, &'static str> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| "it is not hex: write 64 hex digits (e.g. from `openssl rand -hex 32`)")?;
        if bytes.len() < KEY_BYTES {
            return Err("it is shorter than 32 bytes: write 64 hex digits (e.g. from `openssl rand -hex 32`)");
        }
        Ok(AuditKey {
            bytes,
            source: source.into(),
        })
    }

    fn from_variable() -> Result<Option<AuditKey>, KeyError> {
        match std::env::var(KEY_VAR) {
            Ok(text) if !text.trim().is_empty() => Self::from_hex(&text, KEY_VAR)
                .map(Some)
                .map_err(KeyError::Variable),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::Variable(
                "it is not text: write 64 hex digits (e.g. from `openssl rand -hex 32`)",
            )),
        }
    }

    /// Where the key came from: the variable's name or the file's path.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The key of the chain named `chain` (`server`, or an environment's name).
    pub fn chain(&self, chain: &str) -> ChainKey {
        ChainKey(self.derive(&format!("bulkhead audit chain\n{chain}")))
    }

    /// The key checkpoints are signed with.
    pub fn checkpoints(&self) -> CheckpointKey {
        CheckpointKey(self.derive("bulkhead audit checkpoints"))
    }

    /// The key plans are fingerprinted with (`changes::fingerprint`): kept outside the
    /// database like the chain's, so that the digests of a plan's values cannot be recomputed
    /// from guesses by someone who reads the database.
    pub fn plans(&self) -> PlanKey {
        PlanKey(self.derived(PLAN_PURPOSE))
    }

    /// A MAC ready to take input, keyed with a key derived from this one for `purpose`.
    fn derive(&self, purpose: &str) -> HmacSha256 {
        mac(&self.derived(purpose))
    }

    fn derived(&self, purpose: &str) -> [u8; 32] {
        mac(&self.bytes)
            .chain_update(purpose.as_bytes())
            .finalize()
            .into_bytes()
            .into()
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// The key one chain's records are linked with. Cloning it is cheap: the key is prepared once
/// (its padded blocks hashed), and each record's MAC starts from a copy.
#[derive(Clone)]
pub struct ChainKey(HmacSha256);

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// A MAC ready to take input.
    pub fn start(&self) -> HmacSha256 {
        self.0.clone()
    }
}

const PLAN_PURPOSE: &str = "bulkhead plan fingerprints";

/// The key plans are fingerprinted with.
#[derive(Clone)]
pub struct PlanKey([u8; 32]);

impl fmt::Debug for PlanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlanKey(..)")
    }
}

impl PlanKey {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The key checkpoints are signed with.
#[derive(Clone)]
pub struct CheckpointKey(HmacSha256);

impl fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckpointKey(..)")
    }
}

impl CheckpointKey {
    pub fn start(&self) -> HmacSha256 {
        self.0.clone()
    }
}

fn read_file(path: &Path) -> Result<AuditKey, KeyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    check_private(path)?;
    AuditKey::from_hex(&text, path.display().to_string()).map_err(|problem| KeyError::Unusable {
        path: path.to_path_buf(),
        problem,
    })
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Creates the key file with a new random key, readable by its owner alone. Two processes
/// starting at once cannot both create it: the loser reads the winner's.
fn create_file(path: &Path) -> Result<AuditKey, KeyError> {
    let failed = |source| KeyError::Create {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut bytes = vec![0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return read_file(path),
        Err(e) => return Err(failed(e)),
    };
    file.write_all(format!("{}\n", hex::encode(&bytes)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The file's name reaches the disk with it; a failure here only risks a new key after a
        // crash, which the next start reports (the chains no longer match it).
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    tracing::info!(file = %path.display(), "created the audit key; keep it, and back it up apart from the databases");
    Ok(AuditKey {
        bytes,
        source: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("audit.key");
        assert!(matches!(
            AuditKey::existing(&path),
            Err(KeyError::Missing { .. })
        ));
        let created = AuditKey::for_server(&path).unwrap();
        let again = AuditKey::for_server(&path).unwrap();
        assert_eq!(created.bytes, again.bytes);
        assert_eq!(AuditKey::existing(&path).unwrap().bytes, created.bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let exposed = AuditKey::for_server(&path).unwrap_err();
            assert!(exposed.to_string().contains("chmod 600"), "{exposed}");
        }
        assert!(!format!("{created:?}").contains(&hex::encode(&created.bytes)));
    }

    #[test]
    fn hex_keys_are_checked() {
        assert!(AuditKey::from_hex("zz", "t").is_err());
        assert!(AuditKey::from_hex(&"ab".repeat(16), "t").is_err());
        assert!(AuditKey::from_hex(&"ab".repeat(32), "t").is_ok());
    }

    #[test]
    fn chains_have_keys_of_their_own() {
        let key = AuditKey::from_hex(&"ab".repeat(32), "t").unwrap();
        let tag = |k: ChainKey| k.start().chain_update(b"x").finalize().into_bytes();
        assert_eq!(tag(key.chain("prod")), tag(key.chain("prod")));
        assert_ne!(tag(key.chain("prod")), tag(key.chain("dev")));
    }
}
