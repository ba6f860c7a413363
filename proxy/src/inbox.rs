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

/// One file found in the inbox.
#[derive(Debug)]
pub enum Entry {
    /// An admin record a CLI command left: to append, then delete.
    Accepted(PathBuf, Admin),
    /// Anything else: kept as evidence (moved to `inbox/rejected/`) and recorded.
    Rejected(PathBuf, String),
}

/// The files waiting in `dir`, oldest first. Only what a `sluice` verb writes is
/// accepted: a plain file (not a link, not larger than a record) owned by root or by
/// Sluice's own user, holding an admin record of a
/// CLI initiator for one of the actions the verbs record (`ca init`, `audit export`,
/// `audit rotate-key`). Everything else — a retention prune or an anchor dropped in by
/// hand, a record claiming another initiator, a file another user wrote — is rejected.
pub fn read(dir: &Path) -> Vec<Entry> {
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
        .map(|path| match admissible(&path) {
            Ok(admin) => Entry::Accepted(path, admin),
            Err(why) => Entry::Rejected(path, why),
        })
        .collect()
}

/// Moves a rejected file out of the way (into `inbox/rejected/`), keeping it as evidence.
///
/// # Errors
/// The file cannot be moved.
pub fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let rejected = path
        .parent()
        .map_or_else(|| PathBuf::from("rejected"), |d| d.join("rejected"));
    std::fs::create_dir_all(&rejected)?;
    let to = rejected.join(path.file_name().unwrap_or_default());
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// An admin record file is a few hundred bytes; anything this large is not one.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The admin record in `path`, if it is one a `sluice` verb writes; else why not.
///
/// The file is opened without following a symbolic link and judged by what the open
/// handle is (owner, link count, size), then read from that same handle: a link to a file
/// root owns elsewhere, or a swap between the check and the read, does not pass.
fn admissible(path: &Path) -> Result<Admin, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // Non-blocking: opening a FIFO dropped here must not wait for a writer.
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::errno::Errno::ELOOP as i32 => {
                "it is a symbolic link, not a file a sluice command wrote".to_owned()
            }
            _ => format!("cannot read it: {e}"),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    let own = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != own {
        return Err(format!(
            "written by uid {}, not by root or Sluice's own user (uid {own})",
            meta.uid()
        ));
    }
    if !meta.is_file() || meta.nlink() != 1 {
        return Err("it is not a plain file of its own (a hard link or a special file)".into());
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(format!(
            "{} bytes, larger than any admin record",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut file)
        .take(MAX_RECORD_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let admin = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| from_json(&v))
        .ok_or_else(|| "not an admin record".to_owned())?;
    let expected = matches!(
        (admin.action, admin.target.kind.as_str()),
        (AdminAction::Create, "ca")
            | (AdminAction::Update, "hmac_key")
            | (AdminAction::Export, "ledger")
    );
    if admin.initiator.role != "cli" || !expected {
        return Err(format!(
            "a {:?} of {} by a {} initiator is not a record any sluice command leaves here",
            admin.action, admin.target.kind, admin.initiator.role
        ));
    }
    if admin.details.get("anchor").is_some() {
        return Err("it carries a retention anchor, which only the retention run writes".into());
    }
    // The initiator a record names is the user the kernel says wrote the file: a record
    // cannot put its deed on another user.
    let writer = format!("uid:{}", meta.uid());
    if admin.initiator.id != writer {
        return Err(format!(
            "it names initiator `{}` but was written by {writer}",
            admin.initiator.id
        ));
    }
    Ok(admin)
}

/// The security record of a rejected inbox file.
pub fn rejection(file: &Path, kept_as: Option<&Path>, why: &str) -> Admin {
    Admin::new(
        AdminAction::Authorize,
        AdminOutcome::Failure,
        Initiator {
            id: "sluice-inbox".into(),
            role: "system".into(),
            ip: None,
        },
        Target {
            kind: "inbox_file".into(),
            id: file.display().to_string(),
        },
        serde_json::json!({
            "event": "inbox_record_rejected",
            "reason": why,
            "kept_as": kept_as.map(|p| p.display().to_string()),
        }),
    )
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

    /// An admin record by initiator `(id, role)` on ledger target `target`.
    fn admin(
        action: AdminAction,
        (id, role): (&str, &str),
        target: &str,
        details: serde_json::Value,
    ) -> Admin {
        let initiator = Initiator {
            id: id.into(),
            role: role.into(),
            ip: None,
        };
        let target = Target {
            kind: "ledger".into(),
            id: target.into(),
        };
        Admin::new(action, AdminOutcome::Success, initiator, target, details)
    }

    #[test]
    fn records_round_trip_through_the_inbox() {
        let me = format!("uid:{}", nix::unistd::geteuid());
        let ledger = std::env::temp_dir().join(format!("sluice-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&ledger);
        let admin = admin(
            AdminAction::Export,
            (me.as_str(), "cli"),
            "syslog",
            serde_json::json!({"records": 3}),
        );
        write(&ledger, &admin).unwrap();
        std::fs::write(dir(&ledger).join("zz-garbage.json"), b"{not json").unwrap();
        let got = read(&dir(&ledger));
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[1], Entry::Rejected(p, why) if p.ends_with("zz-garbage.json") && why == "not an admin record")
        );
        let Entry::Accepted(_, back) = &got[0] else {
            panic!("the export record is accepted: {got:?}");
        };
        assert_eq!(back.id, admin.id);
        assert_eq!(back.ts, admin.ts);
        assert_eq!(back.action, AdminAction::Export);
        assert_eq!(back.details["records"], 3);
        std::fs::remove_dir_all(ledger).unwrap();
    }

    /// A record no sluice verb writes — a backdated retention prune with an anchor, as an
    /// attacker with write access to the inbox would drop in — is rejected, never appended.
    #[test]
    fn forged_records_are_rejected() {
        let ledger = std::env::temp_dir().join(format!("sluice-inbox-f-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&ledger);
        let mut prune = admin(
            AdminAction::Delete,
            ("sluice-ledger", "system"),
            "retention",
            serde_json::json!({"event": "retention_prune", "anchor": {"seq": 40, "hash": "00"}}),
        );
        prune.ts = "2020-01-01T00:00:00.000Z".into();
        write(&ledger, &prune).unwrap();
        let mut export = admin(
            AdminAction::Export,
            ("uid:0", "cli"),
            "x",
            serde_json::json!({"anchor": {"seq": 1}}),
        );
        export.id = "z-second".into();
        write(&ledger, &export).unwrap();
        // A genuine-looking CLI record that names another user than the one who wrote it.
        let mut other = admin(
            AdminAction::Export,
            ("uid:4242", "cli"),
            "ledger",
            serde_json::json!({"format": "jsonl"}),
        );
        other.id = "z-third".into();
        write(&ledger, &other).unwrap();
        let got = read(&dir(&ledger));
        assert_eq!(got.len(), 3);
        assert!(got.iter().any(|e| matches!(e,
            Entry::Rejected(_, why) if why.contains("names initiator `uid:4242` but was written by uid:")
        )), "{got:?}");
        for e in &got {
            let Entry::Rejected(path, why) = e else {
                panic!("accepted a forged record: {e:?}");
            };
            let kept = quarantine(path).unwrap();
            assert!(kept.exists() && !path.exists());
            let r = rejection(path, Some(&kept), why);
            assert_eq!(r.outcome, AdminOutcome::Failure);
            assert_eq!(r.details["event"], "inbox_record_rejected");
        }
        assert!(read(&dir(&ledger)).is_empty(), "nothing left to append");
        std::fs::remove_dir_all(ledger).unwrap();
    }

    /// A node user who can write into the inbox but not create files root owns links to
    /// one instead: a symbolic or hard link to a genuine export record elsewhere, a file
    /// too large to be a record, or a FIFO that would hang a blocking open. None is appended.
    #[test]
    fn links_and_oversized_files_are_rejected() {
        let ledger = std::env::temp_dir().join(format!("sluice-inbox-l-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&ledger);
        let elsewhere = ledger.join("elsewhere");
        let genuine = write(
            &elsewhere,
            &admin(
                AdminAction::Export,
                ("uid:0", "cli"),
                "x",
                serde_json::json!({}),
            ),
        )
        .unwrap();
        // The genuine file, read where it was written, is a record.
        assert!(matches!(read(&dir(&elsewhere))[..], [Entry::Accepted(..)]));
        let inbox = dir(&ledger);
        std::fs::create_dir_all(&inbox).unwrap();
        std::os::unix::fs::symlink(&genuine, inbox.join("a-symlink.json")).unwrap();
        std::fs::hard_link(&genuine, inbox.join("b-hardlink.json")).unwrap();
        let mut big = serde_json::to_value(admin(
            AdminAction::Export,
            ("uid:0", "cli"),
            "x",
            serde_json::json!({"pad": "x".repeat(100_000)}),
        ))
        .unwrap();
        big["id"] = "c-big".into();
        std::fs::write(inbox.join("c-big.json"), serde_json::to_vec(&big).unwrap()).unwrap();
        nix::unistd::mkfifo(
            &inbox.join("d-fifo.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let got = read(&inbox);
        let why: Vec<&str> = got
            .iter()
            .map(|e| match e {
                Entry::Rejected(_, why) => why.as_str(),
                Entry::Accepted(p, _) => panic!("accepted {}", p.display()),
            })
            .collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why[0].contains("symbolic link"), "{why:?}");
        assert!(why[1].contains("hard link"), "{why:?}");
        assert!(why[2].contains("larger than any admin record"), "{why:?}");
        assert!(why[3].contains("special file"), "{why:?}");
        std::fs::remove_dir_all(ledger).unwrap();
    }
}
