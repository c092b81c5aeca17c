//! Pinned shares: a lowered share that was carried out before its step could be journaled.
//!
//! A rollback never waits for the journal (invariant 16), so when the journal cannot be written
//! (the disk is full) the canary is already off while the database still says 20%. A `kill -9`
//! before any later write succeeds would resume at 20%. So the store keeps, **outside the
//! database and in space reserved when it opened**, the lowest share each such rollout was given
//! and after which journal position: writing over reserved blocks needs no free space, so the
//! pin lands when the database cannot. On load, a pin the journal has not moved past yet is
//! handed back with the rollout ([`crate::StoredRollout::pin`]) and the shell resumes at that
//! share, recording the rollback as soon as it can.
//!
//! The file (`<database>-pins`, 0600) holds two slots of [`SLOT`] bytes; each write goes to the
//! slot not holding the newest generation, with its generation and a SHA-256 over both, then
//! `fdatasync`. A torn write leaves the other slot, so a read always finds the last complete
//! write.

use super::StoreError;
use ramp_core::cohort::ShareBp;
use ramp_core::time::Millis;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes per slot. A pin is under 600 bytes (its reason is capped at [`REASON_MAX`]), so a slot
/// holds a hundred rollouts rolled back at once with the disk full.
pub(crate) const SLOT: usize = 64 * 1024;
/// Characters of a pin's reason that are kept.
pub(crate) const REASON_MAX: usize = 400;
const MAGIC: &[u8; 8] = b"RAMPPIN1";
const HEADER: usize = 8 + 8 + 4 + 32;

/// A lowered share carried out before the journal took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharePin {
    /// The journal position the rollout was at when the share was lowered: the pin stands
    /// until the journal holds a later position (which includes the step that lowered it).
    pub after_seq: u64,
    /// The share in effect (the lowest, if lowered more than once).
    pub share: ShareBp,
    /// When it was lowered (controller time).
    pub at: Millis,
    /// Why (the rollback's reason), at most [`REASON_MAX`] characters.
    pub reason: String,
}

/// The pins of every rollout, and where they are kept.
pub(crate) struct Pins {
    file: Option<Arc<(File, PathBuf)>>,
    /// Why pins cannot be written (the file could only be opened for reading): pins that
    /// stand are still handed back, and each new pin fails with this.
    cannot_write: Option<String>,
    generation: u64,
    pins: BTreeMap<String, SharePin>,
}

impl Pins {
    /// Pins kept in memory only (an in-memory store).
    pub(crate) fn in_memory() -> Self {
        Pins {
            file: None,
            cannot_write: None,
            generation: 0,
            pins: BTreeMap::new(),
        }
    }

    /// Opens (creating and reserving its space if needed) the pins file beside `db`. If it
    /// cannot be opened for writing (a read-only filesystem, an immutable file), the pins it
    /// holds are still read and every new pin fails with the reason, so the store opens.
    pub(crate) fn open(db: &Path) -> Result<Self, StoreError> {
        let mut name = db.as_os_str().to_owned();
        name.push("-pins");
        let path = PathBuf::from(name);
        match Self::open_writable(&path) {
            Ok(pins) => Ok(pins),
            Err(e) => {
                let why = e.to_string();
                let mut pins = match File::open(&path) {
                    Ok(file) => {
                        let (generation, pins) = read_newest(&file).unwrap_or_default();
                        Pins {
                            file: None,
                            cannot_write: None,
                            generation,
                            pins,
                        }
                    }
                    Err(_) => Pins::in_memory(),
                };
                pins.cannot_write = Some(why);
                Ok(pins)
            }
        }
    }

    fn open_writable(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: std::io::Error| StoreError::Open(format!("{}: {e}", path.display()));
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(fail)?;
        let len = file.metadata().map_err(fail)?.len();
        if len < 2 * SLOT as u64 {
            // Real zeros, not a sparse hole: the blocks must exist before the disk fills up.
            let mut zeros = vec![0u8; 2 * SLOT - len as usize];
            write_at(&file, &zeros, len).map_err(fail)?;
            file.sync_all().map_err(fail)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                // The new file's name must survive a crash too.
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            zeros.clear();
        }
        let (generation, pins) = read_newest(&file).map_err(fail)?;
        Ok(Pins {
            file: Some(Arc::new((file, path.to_path_buf()))),
            cannot_write: None,
            generation,
            pins,
        })
    }

    /// The pin of `rollout` if the journal (at `last_seq`) has not moved past it.
    pub(crate) fn standing(&self, rollout: &str, last_seq: u64) -> Option<SharePin> {
        self.pins
            .get(rollout)
            .filter(|p| p.after_seq >= last_seq)
            .cloned()
    }

    /// Records `pin` for `rollout` (keeping the lower share if one stands after the same
    /// position) and drops the pins `superseded` says the journal has moved past; durable when
    /// it returns. The lock is not held while writing, so readers never wait for the disk.
    pub(crate) fn pin(
        this: &Mutex<Pins>,
        rollout: &str,
        mut pin: SharePin,
        superseded: impl Fn(&str, &SharePin) -> bool,
    ) -> Result<(), StoreError> {
        let (generation, next, file) = {
            let pins = lock(this);
            if let Some(why) = &pins.cannot_write {
                return Err(StoreError::Open(why.clone()));
            }
            if let Some(old) = pins
                .pins
                .get(rollout)
                .filter(|o| o.after_seq == pin.after_seq)
                && old.share < pin.share
            {
                pin = old.clone();
            }
            pin.reason = pin.reason.chars().take(REASON_MAX).collect();
            let mut next = pins.pins.clone();
            next.insert(rollout.to_string(), pin);
            next.retain(|name, p| name == rollout || !superseded(name, p));
            (pins.generation + 1, next, pins.file.clone())
        };
        let slot = encode_slot(generation, &next)?;
        if let Some(file) = file {
            let (file, path) = &*file;
            let fail = |e: std::io::Error| StoreError::Open(format!("{}: {e}", path.display()));
            let offset = (generation % 2) * SLOT as u64;
            write_at(file, &slot, offset).map_err(fail)?;
            file.sync_data().map_err(fail)?;
        }
        let mut pins = lock(this);
        pins.generation = generation;
        pins.pins = next;
        Ok(())
    }
}

/// The newest complete slot of `file` (generation 0 and no pins if neither is).
fn read_newest(file: &File) -> std::io::Result<(u64, BTreeMap<String, SharePin>)> {
    let mut slots = [vec![0u8; SLOT], vec![0u8; SLOT]];
    for (i, slot) in slots.iter_mut().enumerate() {
        read_at(file, slot, (i * SLOT) as u64)?;
    }
    Ok(slots
        .iter()
        .filter_map(|s| decode_slot(s))
        .max_by_key(|(generation, _)| *generation)
        .unwrap_or_default())
}

/// The pins, even if a thread panicked while holding them (they are replaced whole).
pub(crate) fn lock(pins: &Mutex<Pins>) -> MutexGuard<'_, Pins> {
    pins.lock().unwrap_or_else(|e| e.into_inner())
}

fn encode_slot(generation: u64, pins: &BTreeMap<String, SharePin>) -> Result<Vec<u8>, StoreError> {
    let body: serde_json::Map<String, serde_json::Value> = pins
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                serde_json::json!({
                    "after_seq": p.after_seq,
                    "share_bp": p.share.bp(),
                    "at": p.at,
                    "reason": p.reason,
                }),
            )
        })
        .collect();
    let payload = serde_json::to_vec(&body).map_err(|e| StoreError::Encode(e.to_string()))?;
    if HEADER + payload.len() > SLOT {
        return Err(StoreError::Encode(format!(
            "{} pinned shares do not fit the {SLOT}-byte pins slot",
            pins.len()
        )));
    }
    let mut slot = vec![0u8; SLOT];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    slot[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    slot[20..52].copy_from_slice(&digest(generation, &payload));
    slot[HEADER..HEADER + payload.len()].copy_from_slice(&payload);
    Ok(slot)
}

fn digest(generation: u64, payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(generation.to_le_bytes());
    h.update(payload);
    h.finalize().into()
}

/// A slot's generation and pins, or `None` if it is empty, torn or damaged.
fn decode_slot(slot: &[u8]) -> Option<(u64, BTreeMap<String, SharePin>)> {
    if slot.len() < HEADER || &slot[..8] != MAGIC {
        return None;
    }
    let generation = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
    let payload = slot.get(HEADER..HEADER + len)?;
    if digest(generation, payload)[..] != slot[20..52] {
        return None;
    }
    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload).ok()?;
    let mut pins = BTreeMap::new();
    for (name, v) in body {
        let share = ShareBp::new(u16::try_from(v.get("share_bp")?.as_u64()?).ok()?)?;
        pins.insert(
            name,
            SharePin {
                after_seq: v.get("after_seq")?.as_u64()?,
                share,
                at: v.get("at")?.as_u64()?,
                reason: v.get("reason")?.as_str()?.to_string(),
            },
        );
    }
    Some((generation, pins))
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn write_at(file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(buf)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(after_seq: u64, bp: u16) -> SharePin {
        SharePin {
            after_seq,
            share: ShareBp::new(bp).unwrap(),
            at: 1_000,
            reason: "3 PCI alerts".into(),
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ramp-pins-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("ramp.db")
    }

    #[test]
    fn pins_survive_reopening_and_a_torn_write_falls_back_to_the_other_slot() {
        let db = temp("torn");
        let pins = Mutex::new(Pins::open(&db).unwrap());
        Pins::pin(&pins, "a", pin(7, 0), |_, _| false).unwrap();
        Pins::pin(&pins, "b", pin(3, 500), |_, _| false).unwrap();
        let again = Pins::open(&db).unwrap();
        assert_eq!(again.standing("a", 7), Some(pin(7, 0)));
        assert_eq!(again.standing("b", 3), Some(pin(3, 500)));
        assert_eq!(again.standing("b", 4), None, "the journal moved past it");
        assert_eq!(
            std::fs::metadata(format!("{}-pins", db.display()))
                .unwrap()
                .len(),
            2 * SLOT as u64
        );

        // Tear the newest slot (generation 2 lives in slot 0): the one before is read.
        let path = format!("{}-pins", db.display());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        write_at(&file, b"garbage", 100).unwrap();
        let torn = Pins::open(&db).unwrap();
        assert_eq!(torn.standing("a", 7), Some(pin(7, 0)));
        assert_eq!(torn.standing("b", 3), None, "the torn write is not taken");
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }

    #[test]
    fn the_lower_share_stands_and_superseded_pins_are_dropped() {
        let pins = Mutex::new(Pins::in_memory());
        Pins::pin(&pins, "a", pin(7, 0), |_, _| false).unwrap();
        Pins::pin(&pins, "a", pin(7, 500), |_, _| false).unwrap();
        assert_eq!(lock(&pins).standing("a", 7).unwrap().share, ShareBp::ZERO);
        Pins::pin(&pins, "b", pin(1, 0), |name, _| name == "a").unwrap();
        assert_eq!(lock(&pins).standing("a", 0), None);
        let long = SharePin {
            reason: "x".repeat(5_000),
            ..pin(1, 0)
        };
        Pins::pin(&pins, "c", long, |_, _| false).unwrap();
        assert_eq!(
            lock(&pins).standing("c", 1).unwrap().reason.len(),
            REASON_MAX
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_pins_file_is_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let db = temp("mode");
        let _pins = Pins::open(&db).unwrap();
        let mode = std::fs::metadata(format!("{}-pins", db.display()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }
}
