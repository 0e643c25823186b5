//! This process's name in file claims, stable across restarts.
//!
//! The name lives in `<data_dir>/replica.id` and the file stays locked while the process runs.
//! A process that starts and takes the lock is, by construction, the only one using that name:
//! the previous holder is gone (the lock dies with its process, `kill -9` included), so the claims
//! it held can be taken back at once instead of after their lease. A second process sharing the
//! data folder finds the file locked and runs under a fresh name of its own, whose claims others
//! take over when their lease expires. A name written on another host (a volume copied or
//! shared between machines, where the lock proves nothing) is replaced by a fresh one.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use uuid::Uuid;

/// The identity and, when it is the stable one, the lock that proves it is ours.
pub struct ReplicaId {
    name: String,
    stable: bool,
    _lock: Option<File>,
}

impl ReplicaId {
    /// Takes the data folder's identity, or a fresh one when another process holds it or the
    /// folder cannot be written.
    pub fn acquire(data_dir: &Path) -> ReplicaId {
        match stable(data_dir) {
            Ok(Some((name, lock))) => ReplicaId { name, stable: true, _lock: Some(lock) },
            Ok(None) => {
                let name = fresh();
                tracing::warn!(data_dir = %data_dir.display(), replica = %name,
                    "another process holds this data folder's replica id; claims of this process are taken over by lease expiry only");
                ReplicaId { name, stable: false, _lock: None }
            }
            Err(e) => {
                let name = fresh();
                tracing::warn!(data_dir = %data_dir.display(), error = %e, replica = %name,
                    "cannot keep a replica id in the data folder; claims of this process are taken over by lease expiry only");
                ReplicaId { name, stable: false, _lock: None }
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the name survives a restart (and so may take back its own claims at once).
    pub fn is_stable(&self) -> bool {
        self.stable
    }
}

/// The kernel's host name (what `uname -n` says), else `HOSTNAME`, else `snowgate`.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "snowgate".into())
}

/// `<host>-<uuid>`: the host part lets a restart tell its own name from one copied with a volume.
fn fresh() -> String {
    format!("{}-{}", host(), Uuid::now_v7())
}

/// `Ok(None)` when another live process holds the file.
fn stable(data_dir: &Path) -> std::io::Result<Option<(String, File)>> {
    std::fs::create_dir_all(data_dir)?;
    let mut file =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(data_dir.join("replica.id"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(e),
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let name = text.trim();
    // A name made on another host (a copied or shared volume) is not ours to resume.
    let ours = name
        .strip_prefix(&host())
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|id| Uuid::parse_str(id).is_ok());
    if ours && name.len() <= 200 && name.chars().all(|c| c.is_ascii_graphic()) {
        return Ok(Some((name.to_string(), file)));
    }
    let name = fresh();
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{name}\n").as_bytes())?;
    file.sync_all()?;
    Ok(Some((name, file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_survives_a_restart_and_a_second_process_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let first = ReplicaId::acquire(dir.path());
        assert!(first.is_stable());
        // While the first holds the lock (another process would see the same), a second is fresh.
        let second = ReplicaId::acquire(dir.path());
        assert!(!second.is_stable());
        assert_ne!(second.name(), first.name());
        let name = first.name().to_string();
        drop(first);
        drop(second);
        let restarted = ReplicaId::acquire(dir.path());
        assert!(restarted.is_stable());
        assert_eq!(restarted.name(), name);
    }
}
