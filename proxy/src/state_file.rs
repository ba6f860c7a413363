//! Small JSON state files the background threads keep (a sink's cursor, the alert
//! rules' state, the witnesses' sizes): read with a default when absent or unreadable,
//! written whole to a temporary file, synced and renamed over, so a crash leaves the old
//! state or the new one, never half of one.

use std::io::Write;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The state in `path`, or the default when there is none (or it does not parse).
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> T {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes `value` to `path` atomically (creating its directory).
///
/// # Errors
/// The directory or the file cannot be written.
pub fn save<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
