//! Key material: the HMAC key (secret, per-record MAC) and the Ed25519 checkpoint key
//! (signing key secret, public key exported for auditors).
//!
//! Files created here are written with mode 0600 through `O_CREAT|O_EXCL`, so a key is
//! never silently replaced.
//!
//! **Custody.** Either key can live outside the ledger directory: a file named in the
//! configuration (`hmac_key_file`, `signing_key_file`), the environment
//! (`$SLUICE_LEDGER_HMAC_KEY`), or a command that prints it (`hmac_key_command`,
//! `signing_key_command`: a KMS or vault agent, run once at open, 10 s at most, its
//! stdout taken as the key). Every key file read, configured or generated, must belong to
//! root or the user Sluice runs as and be readable by nobody else (mode 0600 or 0400;
//! in Kubernetes, `defaultMode: 0400` on the secret volume); otherwise the ledger refuses
//! to open and says so. An auditor needs neither key: `audit verify` with the public key
//! and a witness checks everything but the HMACs.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};

use super::chain::hmac_key_id;
use super::LedgerError;

/// Environment variable holding the HMAC key (hex, or the raw text).
pub const HMAC_KEY_ENV: &str = "SLUICE_LEDGER_HMAC_KEY";
/// File name of the generated HMAC key inside the ledger directory.
pub const HMAC_KEY_FILE: &str = "hmac.key";
/// File name of the Ed25519 checkpoint signing key (PKCS#8 PEM).
pub const SIGNING_KEY_FILE: &str = "checkpoint.key";
/// File name of the exported checkpoint public key (SPKI PEM).
pub const PUBLIC_KEY_FILE: &str = "checkpoint.pub.pem";

fn key_err(path: &Path, detail: impl Into<String>) -> LedgerError {
    LedgerError::Key {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Where a configured secret comes from.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// A file with owner and mode checked.
    File(&'a Path),
    /// A command (argv) whose standard output is the secret.
    Command(&'a [String]),
}

impl Secret<'_> {
    fn label(&self) -> PathBuf {
        match self {
            Secret::File(p) => p.to_path_buf(),
            Secret::Command(argv) => PathBuf::from(format!("`{}`", argv.join(" "))),
        }
    }

    /// The secret's bytes (not yet decoded).
    fn read(&self) -> Result<Vec<u8>, LedgerError> {
        match self {
            Secret::File(p) => read_key_file(p),
            Secret::Command(argv) => run_key_command(argv),
        }
    }
}

/// A key file's bytes, once its owner and mode show nobody else can read it.
fn read_key_file(path: &Path) -> Result<Vec<u8>, LedgerError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| LedgerError::io("read key file", path, e))?;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(key_err(
            path,
            format!(
                "owned by uid {}, not root or the user Sluice runs as (uid {euid}): chown it",
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(key_err(
            path,
            format!(
                "readable by others (mode {:04o}): chmod 600 {} (in Kubernetes, defaultMode: 0400 on the secret volume)",
                meta.mode() & 0o7777,
                path.display()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| LedgerError::io("read key file", path, e))
}

/// Run `argv` (10 s at most); its standard output is the key.
fn run_key_command(argv: &[String]) -> Result<Vec<u8>, LedgerError> {
    use std::io::Read;
    let label = PathBuf::from(format!("`{}`", argv.join(" ")));
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| key_err(&label, "the key command is empty"))?;
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| key_err(&label, format!("cannot run it: {e}")))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(key_err(&label, "gave no key within 10 s"));
            }
            Err(e) => return Err(key_err(&label, format!("cannot wait for it: {e}"))),
        }
    };
    let mut out = Vec::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(key_err(
            &label,
            format!("exited with {status}: {}", err.trim()),
        ));
    }
    if out.trim_ascii().is_empty() {
        return Err(key_err(&label, "printed no key"));
    }
    Ok(out)
}

/// Key text → bytes: 64+ hex digits decode to bytes, anything else is taken verbatim.
fn key_bytes(text: &[u8]) -> Vec<u8> {
    let trimmed = text.trim_ascii();
    if trimmed.len() >= 32 && trimmed.len() % 2 == 0 {
        if let Ok(b) = hex::decode(trimmed) {
            return b;
        }
    }
    trimmed.to_vec()
}

fn random_bytes<const N: usize>(path: &Path) -> Result<[u8; N], LedgerError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b)
        .map_err(|e| key_err(path, format!("no randomness from the OS: {e}")))?;
    Ok(b)
}

/// Write `bytes` to a new file with mode `mode`; fails if it exists.
fn create_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LedgerError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| LedgerError::io("create key file", path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| LedgerError::io("write key file", path, e))
}

/// The HMAC key used for new records: the configured file, else the environment
/// variable, else `<dir>/hmac.key`, generated (32 random bytes, hex, mode 0600) when
/// missing and `create` is set. Returns `(id, key)`.
///
/// # Errors
/// [`LedgerError::Key`] when a configured file is unreadable or empty.
pub(crate) fn current_hmac_key(
    dir: &Path,
    from: Option<Secret<'_>>,
    create: bool,
) -> Result<Option<(String, Vec<u8>)>, LedgerError> {
    let key = if let Some(src) = from {
        key_bytes(&src.read()?)
    } else if let Some(v) = std::env::var_os(HMAC_KEY_ENV).filter(|v| !v.is_empty()) {
        key_bytes(v.as_encoded_bytes())
    } else {
        let path = dir.join(HMAC_KEY_FILE);
        match read_key_file(&path) {
            Ok(text) => key_bytes(&text),
            Err(LedgerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && create =>
            {
                let key = random_bytes::<32>(&path)?;
                create_file(&path, format!("{}\n", hex::encode(key)).as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "generated a new ledger HMAC key");
                key.to_vec()
            }
            Err(LedgerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
    };
    if key.len() < 16 {
        return Err(key_err(
            &from.map_or_else(|| dir.to_path_buf(), |s| s.label()),
            "HMAC key shorter than 16 bytes; use 32 random bytes, hex-encoded",
        ));
    }
    Ok(Some((hmac_key_id(&key), key)))
}

/// What [`rotate_hmac_key`] did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Id of the key retired.
    pub old_key_id: String,
    /// Id of the key new records are signed with.
    pub new_key_id: String,
    /// Where the retired key is kept, for `audit verify`.
    pub archived: std::path::PathBuf,
}

/// Retire `<dir>/hmac.key` as `<dir>/hmac-<old id>.key` (kept for verification) and put
/// a fresh random key in its place. The new key is written and synced before the old one
/// is moved, so a crash at any point leaves a usable key and every old key on disk.
///
/// # Errors
/// [`LedgerError::Key`] when the key does not live in `<dir>/hmac.key` (a configured
/// file or the environment variable: rotate it there) or is missing.
pub fn rotate_hmac_key(dir: &Path) -> Result<Rotation, LedgerError> {
    if std::env::var_os(HMAC_KEY_ENV).is_some_and(|v| !v.is_empty()) {
        return Err(key_err(
            dir,
            format!("the HMAC key comes from ${HMAC_KEY_ENV}; rotate it there, and keep the old key as {}/hmac-<id>.key for `audit verify`", dir.display()),
        ));
    }
    let current = dir.join(HMAC_KEY_FILE);
    let Some((old_id, old)) = current_hmac_key(dir, None, false)? else {
        return Err(key_err(
            &current,
            "no HMAC key to rotate (the ledger creates one at first open)",
        ));
    };
    let archived = dir.join(format!("hmac-{old_id}.key"));
    match create_file(
        &archived,
        format!("{}\n", hex::encode(&old)).as_bytes(),
        0o600,
    ) {
        Ok(()) => {}
        // Already archived (a rotation interrupted after this step): same key, same name.
        Err(_) if archived.exists() => {}
        Err(e) => return Err(e),
    }
    let fresh = dir.join(format!("{HMAC_KEY_FILE}.new"));
    let _ = std::fs::remove_file(&fresh);
    let key = random_bytes::<32>(&fresh)?;
    create_file(&fresh, format!("{}\n", hex::encode(key)).as_bytes(), 0o600)?;
    std::fs::rename(&fresh, &current)
        .map_err(|e| LedgerError::io("install the new HMAC key", &current, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(Rotation {
        old_key_id: old_id,
        new_key_id: hmac_key_id(&key),
        archived,
    })
}

/// Every HMAC key an auditor can use by default: the current key (file, environment or
/// `<dir>/hmac.key`) and each retired key kept as `<dir>/hmac-<anything>.key`.
///
/// # Errors
/// A key file exists but cannot be read.
pub fn load_hmac_keys(
    dir: &Path,
    from: Option<Secret<'_>>,
) -> Result<HashMap<String, Vec<u8>>, LedgerError> {
    let mut keys = HashMap::new();
    if let Some((id, k)) = current_hmac_key(dir, from, false)? {
        keys.insert(id, k);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("hmac-") && name.ends_with(".key") {
                let path = e.path();
                let text = read_key_file(&path)?;
                let k = key_bytes(&text);
                keys.insert(hmac_key_id(&k), k);
            }
        }
    }
    Ok(keys)
}

/// The checkpoint signing key, generated (with its public key file) at first open.
///
/// # Errors
/// [`LedgerError::Key`] when the key file is not a PKCS#8 Ed25519 key.
pub(crate) fn signing_key(
    dir: &Path,
    from: Option<Secret<'_>>,
) -> Result<ed25519_dalek::SigningKey, LedgerError> {
    let path = dir.join(SIGNING_KEY_FILE);
    let pub_path = dir.join(PUBLIC_KEY_FILE);
    let parse = |text: &[u8], at: &Path| {
        let text = String::from_utf8_lossy(text);
        let text = text.trim();
        let mut seed = [0u8; 32];
        if hex::decode_to_slice(text, &mut seed).is_ok() {
            return Ok(ed25519_dalek::SigningKey::from_bytes(&seed));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(text).map_err(|e| {
            key_err(
                at,
                format!("neither a PKCS#8 Ed25519 private key (PEM) nor 64 hex digits: {e}"),
            )
        })
    };
    if let Some(src) = from {
        let key = parse(&src.read()?, &src.label())?;
        // The public key file follows the key in use.
        let pem = public_pem(&key, &src.label())?;
        if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(pem.as_str()) {
            let _ = std::fs::remove_file(&pub_path);
            create_file(&pub_path, pem.as_bytes(), 0o644)?;
        }
        return Ok(key);
    }
    let key = match read_key_file(&path) {
        Ok(pem) => parse(&pem, &path)?,
        Err(LedgerError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = ed25519_dalek::SigningKey::from_bytes(&random_bytes::<32>(&path)?);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|e| key_err(&path, format!("cannot encode key: {e}")))?;
            create_file(&path, pem.as_bytes(), 0o600)?;
            tracing::info!(path = %path.display(), "generated a new ledger checkpoint signing key");
            key
        }
        Err(e) => return Err(e),
    };
    // The public key file is derived; (re)write it when missing.
    if !pub_path.exists() {
        create_file(&pub_path, public_pem(&key, &path)?.as_bytes(), 0o644)?;
    }
    Ok(key)
}

/// SPKI PEM of the public half of `key`.
pub(crate) fn public_pem(
    key: &ed25519_dalek::SigningKey,
    path: &Path,
) -> Result<String, LedgerError> {
    key.verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| key_err(path, format!("cannot encode public key: {e}")))
}

/// Parse an SPKI PEM public key.
pub(crate) fn parse_public_pem(
    pem: &str,
    origin: &Path,
) -> Result<ed25519_dalek::VerifyingKey, LedgerError> {
    ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
        .map_err(|e| key_err(origin, format!("not an SPKI PEM Ed25519 public key: {e}")))
}

/// Path of the public key file in `dir`.
pub(crate) fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUBLIC_KEY_FILE)
}

/// The ledger's checkpoint signer as a verifier holds it: its origin (`ledger.origin`,
/// else derived from the key) and its public key, from `public_key` (SPKI PEM, e.g. an
/// auditor's trusted copy, named by `source`) or else the directory's
/// `checkpoint.pub.pem`.
///
/// # Errors
/// [`LedgerError::Key`] when no public key can be read or it is malformed.
pub fn checkpoint_verifier(
    cfg: &super::LedgerConfig,
    public_key: Option<(&str, &Path)>,
) -> Result<crate::tlog::note::NoteVerifier, LedgerError> {
    let key = match public_key {
        Some((pem, source)) => parse_public_pem(pem, source)?,
        None => {
            let p = public_key_path(&cfg.dir);
            let pem = std::fs::read_to_string(&p)
                .map_err(|e| key_err(&p, format!("cannot read the checkpoint public key: {e} (the proxy writes it at first start)")))?;
            parse_public_pem(&pem, &p)?
        }
    };
    Ok(crate::tlog::note::NoteVerifier {
        name: cfg
            .origin
            .clone()
            .unwrap_or_else(|| super::writer::default_origin(&key)),
        key,
    })
}
