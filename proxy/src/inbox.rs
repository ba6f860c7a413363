//! The ledger inbox: how a CLI command records an admin action (an export, a report)
//! while `sluice run` holds the ledger's exclusive lock.
//!
//! The command writes the admin record as one JSON file into `<ledger dir>/inbox/`
//! (written under a temporary name, then renamed, so a reader never sees half a file);
//! the running proxy appends each file to the ledger and only then deletes it. When no
//! proxy runs, the command appends to the ledger itself and the inbox is not used.

use std::path::{Path, PathBuf};

use crate::record::{Admin, AdminAction, AdminOutcome, Initiator, Target};

/// The inbox directory of a ledger.
pub fn dir(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join("inbox")
}

/// Leave an admin record for the running proxy.
///
/// # Errors
/// The file could not be written.
pub fn write(ledger_dir: &Path, admin: &Admin) -> std::io::Result<PathBuf> {
    let dir = dir(ledger_dir);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{}.tmp", admin.id));
    let path = dir.join(format!("{}.json", admin.id));
    std::fs::write(&tmp, serde_json::to_vec(admin)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The admin records waiting in `dir`, oldest first, with their files. Files that do
/// not parse are left in place and logged: they are evidence, not garbage.
pub fn read(dir: &Path) -> Vec<(PathBuf, Admin)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| from_json(&v));
            if parsed.is_none() {
                tracing::error!(file = %path.display(), "unreadable admin record in the ledger inbox; left in place");
            }
            parsed.map(|a| (path, a))
        })
        .collect()
}

fn from_json(v: &serde_json::Value) -> Option<Admin> {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let action = match v.get("action")?.as_str()? {
        "create" => AdminAction::Create,
        "update" => AdminAction::Update,
        "delete" => AdminAction::Delete,
        "authenticate" => AdminAction::Authenticate,
        "authorize" => AdminAction::Authorize,
        "export" => AdminAction::Export,
        "import" => AdminAction::Import,
        "reload" => AdminAction::Reload,
        _ => return None,
    };
    let outcome = match v.get("outcome")?.as_str()? {
        "success" => AdminOutcome::Success,
        "failure" => AdminOutcome::Failure,
        _ => return None,
    };
    let init = v.get("initiator")?;
    let target = v.get("target")?;
    let mut admin = Admin::new(
        action,
        outcome,
        Initiator {
            id: init.get("id")?.as_str()?.to_string(),
            role: init.get("role")?.as_str()?.to_string(),
            ip: init.get("ip").and_then(|x| x.as_str()).map(str::to_string),
        },
        Target {
            kind: target.get("type")?.as_str()?.to_string(),
            id: target.get("id")?.as_str()?.to_string(),
        },
        v.get("details").cloned().unwrap_or(serde_json::Value::Null),
    );
    // Keep the command's own id and time: they say when the action happened.
    admin.id = s("id")?;
    admin.ts = s("ts")?;
    Some(admin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_inbox() {
        let ledger = std::env::temp_dir().join(format!("sluice-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&ledger);
        let admin = Admin::new(
            AdminAction::Export,
            AdminOutcome::Success,
            Initiator {
                id: "uid:0".into(),
                role: "cli".into(),
                ip: None,
            },
            Target {
                kind: "ledger".into(),
                id: "syslog".into(),
            },
            serde_json::json!({"records": 3}),
        );
        write(&ledger, &admin).unwrap();
        std::fs::write(dir(&ledger).join("zz-garbage.json"), b"{not json").unwrap();
        let got = read(&dir(&ledger));
        assert_eq!(got.len(), 1, "garbage is left alone, not parsed");
        let back = &got[0].1;
        assert_eq!(back.id, admin.id);
        assert_eq!(back.ts, admin.ts);
        assert_eq!(back.action, AdminAction::Export);
        assert_eq!(back.details["records"], 3);
        std::fs::remove_dir_all(ledger).unwrap();
    }
}
