//! The raft layer's storage alarms: damage found in the data dir (a process-wide counter for `/metrics`)
//! and the free-space probe behind the NOSPACE alarm (statvfs on the data dir).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// Times this process found damaged raft storage (checksum, decoding, redb integrity, storage panic).
pub static CORRUPTION_DETECTED: AtomicU64 = AtomicU64::new(0);

/// Snapshot streams this process refused because a chunk or the assembled data failed its CRC-32C (damaged
/// in transit: the sender sends the snapshot again; nothing was applied).
pub static SNAPSHOT_CHUNKS_REFUSED: AtomicU64 = AtomicU64::new(0);

/// How often the loop measures free space: a statvfs costs microseconds, and a second is far shorter than
/// the time a busy master needs to fill the margin of `min_free_bytes`.
pub const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes an unprivileged process can still write on the file system holding `path`.
#[allow(clippy::useless_conversion)] // the statvfs field types are narrower on 32-bit targets
pub fn free_bytes(path: &Path) -> Result<u64, nix::Error> {
    let st = nix::sys::statvfs::statvfs(path)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// The NOSPACE alarm for `free` bytes against `floor` (0 = off): `Some((free, floor))` while raised. At
/// exactly the floor the alarm is clear.
pub fn nospace(free: u64, floor: u64) -> Option<(u64, u64)> {
    (free < floor).then_some((free, floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nospace_at_the_floor() {
        let floor = 512 << 20;
        assert_eq!(nospace(floor, floor), None, "exactly the floor is enough");
        assert_eq!(nospace(floor - 1, floor), Some((floor - 1, floor)));
        assert_eq!(nospace(0, floor), Some((0, floor)));
        assert_eq!(nospace(0, 0), None, "floor 0 turns the alarm off");
    }

    #[test]
    fn free_bytes_of_a_real_dir_and_an_error_for_a_missing_one() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
        assert!(free_bytes(&dir.path().join("missing/x")).is_err());
    }
}
