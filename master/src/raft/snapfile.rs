//! Snapshot files under `<data dir>/snapshots/`: what the builder thread writes, what the transport streams
//! to a follower, what a follower writes while receiving and restores from. Memory is bounded by one chunk
//! ([`FILE_CHUNK`]), never by the state.
//!
//! Layout: [`MAGIC`] (16 bytes), then frames `len (u32 LE) ++ tag ++ crc32c(body) (u32 LE) ++ body`
//! (each payload at most `FILE_CHUNK`), then the trailer `u32::MAX (LE) ++ total payload bytes (u64 LE) ++
//! crc32c of all payloads (u32 LE)`. A frame's body is its payload as is (tag `0xC1`, `len` the payload's
//! length) or Snappy-compressed ([`SNAPPY_TAG`], `len` the compressed length, written only when smaller).
//! The frame's CRC is of its body as stored, checked before decompressing (a change to compressed bytes
//! can decompress to the same payload; it is still damage); the trailer's whole CRC is of the payloads,
//! so a payload is also checked after decompressing. The payloads concatenated are the Fsm's snapshot
//! bytes, exactly what an older binary sent in one `Snapshot.data`; the frames' CRCs are the wire chunks'
//! CRCs and the whole CRC is the stream's `data_crc32c`. Only files are compressed: the wire carries
//! payloads, so mixed versions still stream to each other.
//!
//! A file is written as `<name>.part`, fsync'd, renamed to `<name>.snap` and the directory fsync'd. raft-rs
//! only ever sees a [`Descriptor`] (name, size, whole CRC) in `Snapshot.data`. [`SnapDir`] counts who holds
//! each file (the current snapshot, a build, a send, a receive): a file is deleted as soon as it is neither
//! current nor held, and at most [`MAX_SNAPSHOT_FILES`] exist at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::checksum::{self, crc32c, crc32c_extend};

/// Sub-directory of the data dir holding snapshot files.
pub const DIR: &str = "snapshots";
/// Payload bytes per sealed frame of a file, and per streamed chunk: what a build, a send, a receive or a
/// restore holds in memory at once (well under the transport's 16 MiB message limit).
pub const FILE_CHUNK: usize = 1 << 20;
/// Most snapshot files (finished or `.part`) a data dir holds at once: the current one, one being built,
/// one being received, one received and waiting for its Ready, and superseded ones still streaming to up
/// to four peers (a 5-node cluster). A build or a receive past it is refused (raft retries later), so a
/// slow peer cannot make files pile up on disk.
pub const MAX_SNAPSHOT_FILES: usize = 8;
/// A file being written (built or received) is flushed to disk every this many payload bytes, so its
/// final fsync has little left to write. One fsync of a 455 MiB file at the end stalled another process's
/// 4 KiB fdatasync on the same ext4 disk by up to 258 ms; flushing every 8 MiB kept that stall at 11 ms
/// (issue 17: members sharing a disk with a member fed a big snapshot missed their election timeouts).
pub const FLUSH_EVERY: u64 = 8 << 20;
const MAGIC: &[u8; 16] = b"huatuo-snapfile1";
/// Frame tag of a Snappy-compressed body (`checksum::TAG`, 0xC1, is a payload as is). The snapshot's records
/// are JSON: compressed, a 1.5 M-object state takes about a tenth of the disk (see ARCHITECTURE.md).
pub const SNAPPY_TAG: u8 = 0xC5;
const DESC_MAGIC: &[u8; 16] = b"huatuo-snapdesc1";
const END: u32 = u32::MAX;
const FRAME_HEAD: usize = 4 + checksum::OVERHEAD;
const PART: &str = ".part";
const SNAP: &str = ".snap";
/// Longest file name a descriptor may carry (ours are about 60 bytes).
const MAX_NAME: usize = 128;

/// A snapshot file problem. `Damaged` is a corrupt replica when the file is ours.
#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("{0}")]
    Damaged(String),
    #[error("snapshot file {path}: {err}")]
    Io { path: String, err: io::Error },
    /// [`MAX_SNAPSHOT_FILES`] reached, or the build was cancelled (the node is stopping).
    #[error("{0}")]
    Busy(String),
}

fn io_err(path: &Path, err: io::Error) -> SnapError {
    SnapError::Io { path: path.display().to_string(), err }
}

/// What raft-rs carries in `Snapshot.data`: which local file holds the snapshot, its size and CRC-32C.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub name: String,
    pub size: u64,
    pub crc: u32,
}

impl Descriptor {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = DESC_MAGIC.to_vec();
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.crc.to_le_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    /// Decodes a descriptor; a name that could leave the snapshot directory is refused.
    pub fn decode(b: &[u8]) -> Result<Self, SnapError> {
        let bad = |why: &str| SnapError::Damaged(format!("snapshot descriptor: {why}"));
        let rest = b.strip_prefix(DESC_MAGIC).ok_or_else(|| bad("bad magic"))?;
        if rest.len() < 12 || rest.len() > 12 + MAX_NAME {
            return Err(bad("bad length"));
        }
        let size = u64::from_le_bytes(rest[..8].try_into().map_err(|_| bad("size"))?);
        let crc = u32::from_le_bytes(rest[8..12].try_into().map_err(|_| bad("crc"))?);
        let name = std::str::from_utf8(&rest[12..]).map_err(|_| bad("name is not utf-8"))?;
        if !name.ends_with(SNAP)
            || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
            || name.starts_with('.')
        {
            return Err(bad("bad file name"));
        }
        Ok(Descriptor { name: name.to_string(), size, crc })
    }

    /// True for bytes that start like a descriptor (a store written by an older binary keeps the whole
    /// snapshot instead).
    pub fn is_descriptor(b: &[u8]) -> bool {
        b.starts_with(DESC_MAGIC)
    }
}

/// Test hook: holds builds after they started (a barrier, see [`SnapDir::hold_builds`]).
#[derive(Default)]
pub struct Gate {
    state: Mutex<(bool, bool)>, // (reached, released)
    cv: Condvar,
}

impl Gate {
    /// Blocks until a build reached the gate, up to `timeout`; true if it did.
    pub fn wait_reached(&self, timeout: std::time::Duration) -> bool {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = self.cv.wait_timeout_while(g, timeout, |s| !s.0).unwrap_or_else(|p| p.into_inner());
        g.0
    }
    /// Lets every held build go on.
    pub fn release(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.cv.notify_all();
    }
    pub(crate) fn pass(&self, cancel: &AtomicBool) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = true;
        self.cv.notify_all();
        while !g.1 && !cancel.load(Ordering::Relaxed) {
            // Bounded wait so a cancelled build (node stopping) notices.
            g = self
                .cv
                .wait_timeout(g, std::time::Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[derive(Default)]
struct Registry {
    holds: BTreeMap<String, usize>,
    current: Option<String>,
}

/// The snapshot directory of one node and who holds which file.
pub struct SnapDir {
    path: PathBuf,
    reg: Mutex<Registry>,
    /// Set when the node stops: a build in progress gives up at its next chunk.
    cancel: AtomicBool,
    gate: Mutex<Option<Arc<Gate>>>,
    /// The storage's damage flag: a damaged file found while sending stops the node.
    damage: Mutex<Option<super::storage::DamageFlag>>,
}

/// A claim on a file: it is not deleted while held. Dropping the last claim of a file that is not the
/// current snapshot deletes it.
pub struct Hold {
    dir: Arc<SnapDir>,
    name: String,
    armed: bool,
}

impl Hold {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Releases the claim without deleting anything (a test's "crash": the file stays as a crash leaves it).
    pub fn forget(mut self) {
        self.armed = false;
        self.dir.release(&self.name, false);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.armed {
            self.dir.release(&self.name, true);
        }
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40)
        ^ N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapDir {
    /// The snapshot directory under `data_dir` (created if missing).
    pub fn open(data_dir: &Path) -> Result<Arc<SnapDir>, SnapError> {
        let path = data_dir.join(DIR);
        std::fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
        Ok(Arc::new(SnapDir {
            path,
            reg: Mutex::default(),
            cancel: AtomicBool::new(false),
            gate: Mutex::new(None),
            damage: Mutex::new(None),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn set_damage_flag(&self, flag: super::storage::DamageFlag) {
        *lock(&self.damage) = Some(flag);
    }

    /// Records damage found in one of our files outside the loop (a send): the loop stops the node.
    pub(crate) fn note_damage(&self, msg: &str) {
        if let Some(f) = lock(&self.damage).as_ref()
            && f.set(msg.to_string()).is_ok()
        {
            super::alarms::CORRUPTION_DETECTED.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %msg, "snapshot file is damaged");
        }
    }

    /// Test hook: builds wait at the returned gate (after taking their read transaction and creating their
    /// file) until it is released.
    pub fn hold_builds(&self) -> Arc<Gate> {
        let g = Arc::new(Gate::default());
        *lock(&self.gate) = Some(g.clone());
        g
    }

    pub(crate) fn gate(&self) -> Option<Arc<Gate>> {
        lock(&self.gate).clone()
    }

    /// Stops builds in progress (at their next chunk) and releases held ones.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(g) = lock(&self.gate).as_ref() {
            g.cv.notify_all();
        }
    }

    pub(crate) fn cancelled(&self) -> &AtomicBool {
        &self.cancel
    }

    /// Files held or current: what the limit counts.
    pub fn in_use(&self) -> usize {
        let r = lock(&self.reg);
        r.holds.len() + usize::from(r.current.as_ref().is_some_and(|c| !r.holds.contains_key(c)))
    }

    /// The names of the files on disk (finished and `.part`).
    pub fn files(&self) -> Result<Vec<String>, SnapError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path).map_err(|e| io_err(&self.path, e))? {
            let e = e.map_err(|e| io_err(&self.path, e))?;
            out.push(e.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// At open: `current` is the snapshot the metadata references; every other file (a `.part` left by a
    /// crash, a superseded file whose deletion a crash interrupted) is removed.
    pub fn reset(&self, current: Option<&str>) -> Result<usize, SnapError> {
        let mut removed = 0;
        for name in self.files()? {
            if Some(name.as_str()) != current {
                let p = self.path.join(&name);
                std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %self.path.display(), "removed leftover snapshot files");
        }
        lock(&self.reg).current = current.map(str::to_string);
        Ok(removed)
    }

    /// Makes `name` the current snapshot (its metadata is durable); the previous one is deleted unless held.
    pub fn set_current(&self, name: Option<&str>) {
        let old = {
            let mut r = lock(&self.reg);
            let old = std::mem::replace(&mut r.current, name.map(str::to_string));
            old.filter(|o| Some(o.as_str()) != name && !r.holds.contains_key(o))
        };
        if let Some(o) = old {
            self.remove(&o);
        }
    }

    fn remove(&self, name: &str) {
        let p = self.path.join(name);
        match std::fs::remove_file(&p) {
            Ok(()) => tracing::debug!(file = %p.display(), "snapshot file removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %p.display(), error = %e, "cannot remove snapshot file"),
        }
    }

    fn claim(self: &Arc<Self>, name: &str) -> Hold {
        *lock(&self.reg).holds.entry(name.to_string()).or_insert(0) += 1;
        Hold { dir: self.clone(), name: name.to_string(), armed: true }
    }

    fn release(&self, name: &str, delete: bool) {
        let gone = {
            let mut r = lock(&self.reg);
            let last = match r.holds.get_mut(name) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    r.holds.remove(name);
                    true
                }
                None => false,
            };
            last && r.current.as_deref() != Some(name)
        };
        if gone && delete {
            self.remove(name);
        }
    }

    /// Holds an existing finished file (a send): `None` when it is gone (superseded and deleted).
    pub fn hold(self: &Arc<Self>, name: &str) -> Option<Hold> {
        let h = self.claim(name);
        if self.path.join(name).is_file() {
            Some(h)
        } else {
            h.forget();
            None
        }
    }

    /// Starts a new file for the snapshot at (index, term). Refused at [`MAX_SNAPSHOT_FILES`].
    pub fn create(self: &Arc<Self>, index: u64, term: u64) -> Result<Writer, SnapError> {
        if self.in_use() >= MAX_SNAPSHOT_FILES {
            return Err(SnapError::Busy(format!(
                "{MAX_SNAPSHOT_FILES} snapshot files in use (the limit): not starting another"
            )));
        }
        let stem = format!("snap-{index:020}-{term}-{:016x}", unique());
        let part_name = format!("{stem}{PART}");
        let hold = self.claim(&part_name);
        let path = self.path.join(&part_name);
        let file = File::options().write(true).create_new(true).open(&path).map_err(|e| io_err(&path, e))?;
        let mut w = Writer {
            dir: self.clone(),
            stem,
            path,
            out: BufWriter::with_capacity(FILE_CHUNK + FRAME_HEAD, file),
            buf: Vec::with_capacity(FILE_CHUNK),
            packed: vec![0; snap::raw::max_compress_len(FILE_CHUNK)],
            encoder: snap::raw::Encoder::new(),
            total: 0,
            crc: 0,
            flushes: 0,
            hold: Some(hold),
        };
        w.out.write_all(MAGIC).map_err(|e| io_err(&w.path, e))?;
        Ok(w)
    }

    /// Opens a finished file for reading; it must match `desc` (checked as it is read).
    pub fn reader(&self, desc: &Descriptor) -> Result<Reader, SnapError> {
        let path = self.path.join(&desc.name);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapError::Damaged(format!("snapshot file {} is missing", path.display())));
            }
            Err(e) => return Err(io_err(&path, e)),
        };
        let mut r = Reader {
            path,
            file: BufReader::with_capacity(FRAME_HEAD + FILE_CHUNK, f),
            frame: Vec::new(),
            packed: Vec::new(),
            pos: 0,
            total: 0,
            crc: 0,
            done: false,
            expect: (desc.size, desc.crc),
        };
        let mut m = [0u8; 16];
        r.file.read_exact(&mut m).map_err(|e| r.damaged(&format!("header: {e}")))?;
        if &m != MAGIC {
            return Err(r.damaged("bad magic"));
        }
        Ok(r)
    }

    /// Reads a whole file, verifying every frame, the trailer and the descriptor's size and CRC.
    pub fn verify(&self, desc: &Descriptor) -> Result<(), SnapError> {
        let mut r = self.reader(desc)?;
        while r.next_chunk()?.is_some() {}
        Ok(())
    }
}

/// Writes one snapshot file; `finish` makes it durable under its final name. Dropped unfinished, it removes
/// its `.part`.
pub struct Writer {
    dir: Arc<SnapDir>,
    stem: String,
    path: PathBuf,
    out: BufWriter<File>,
    buf: Vec<u8>,
    /// The frame's body compressed (scratch, one chunk's worst case).
    packed: Vec<u8>,
    encoder: snap::raw::Encoder,
    total: u64,
    crc: u32,
    /// Intermediate flushes to disk so far (one per [`FLUSH_EVERY`] payload bytes).
    flushes: u64,
    /// Claim on the `.part`: dropped unfinished (an error, a refused stream), it deletes the `.part`.
    hold: Option<Hold>,
}

impl Writer {
    /// Payload bytes written so far and their CRC-32C.
    pub fn progress(&self) -> (u64, u32) {
        (self.total + self.buf.len() as u64, crc32c_extend(self.crc, &self.buf))
    }

    fn frame(&mut self) -> io::Result<()> {
        if self.dir.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("snapshot build cancelled: the node is stopping"));
        }
        let packed = self.encoder.compress(&self.buf, &mut self.packed).map_err(io::Error::other)?;
        let (tag, body) = if packed < self.buf.len() {
            (SNAPPY_TAG, &self.packed[..packed])
        } else {
            (checksum::TAG, &self.buf[..])
        };
        self.out.write_all(&(body.len() as u32).to_le_bytes())?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&crc32c(body).to_le_bytes())?;
        self.out.write_all(body)?;
        let before = self.total;
        self.total += self.buf.len() as u64;
        self.crc = crc32c_extend(self.crc, &self.buf);
        self.buf.clear();
        if self.total / FLUSH_EVERY > before / FLUSH_EVERY {
            self.out.flush()?;
            self.out.get_ref().sync_data()?;
            self.flushes += 1;
        }
        Ok(())
    }

    /// Intermediate flushes to disk so far.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    /// Flushes the last frame and the trailer, fsyncs, renames to `.snap`, fsyncs the directory. The
    /// returned hold keeps the file until whoever records it (the loop) is done.
    pub fn finish(mut self) -> Result<(Descriptor, Hold), SnapError> {
        let path = self.path.clone();
        let r: io::Result<()> = (|| {
            if !self.buf.is_empty() {
                self.frame()?;
            }
            self.out.write_all(&END.to_le_bytes())?;
            self.out.write_all(&self.total.to_le_bytes())?;
            self.out.write_all(&self.crc.to_le_bytes())?;
            self.out.flush()?;
            self.out.get_ref().sync_all()
        })();
        r.map_err(|e| io_err(&path, e))?;
        let name = format!("{}{SNAP}", self.stem);
        let hold = self.dir.claim(&name);
        let fin = self.dir.path.join(&name);
        std::fs::rename(&path, &fin).map_err(|e| io_err(&fin, e))?;
        File::open(&self.dir.path).and_then(|d| d.sync_all()).map_err(|e| io_err(&self.dir.path, e))?;
        // The .part name is gone; release its claim without trying to delete it.
        if let Some(h) = self.hold.take() {
            h.forget();
        }
        Ok((Descriptor { name, size: self.total, crc: self.crc }, hold))
    }

    /// Test hook: leaves the `.part` on disk as a crash would.
    pub fn abandon(mut self) {
        if let Some(h) = self.hold.take() {
            h.forget();
        }
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FILE_CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == FILE_CHUNK {
            self.frame()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads a snapshot file frame by frame, verifying each frame's CRC, and at the end the trailer and the
/// descriptor's size and whole CRC. Any mismatch is `Damaged`.
pub struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    frame: Vec<u8>,
    /// A compressed frame's body as read (scratch).
    packed: Vec<u8>,
    pos: usize,
    total: u64,
    crc: u32,
    done: bool,
    expect: (u64, u32),
}

impl Reader {
    fn damaged(&self, why: &str) -> SnapError {
        SnapError::Damaged(format!("snapshot file {}: {why}", self.path.display()))
    }

    /// The next verified chunk and its CRC-32C; `None` once the trailer verified.
    pub fn next_chunk(&mut self) -> Result<Option<(&[u8], u32)>, SnapError> {
        if self.done {
            return Ok(None);
        }
        let mut head = [0u8; 4];
        self.file.read_exact(&mut head).map_err(|e| self.damaged(&format!("truncated: {e}")))?;
        let len = u32::from_le_bytes(head);
        if len == END {
            let mut t = [0u8; 12];
            self.file.read_exact(&mut t).map_err(|e| self.damaged(&format!("trailer: {e}")))?;
            let total = u64::from_le_bytes(t[..8].try_into().map_err(|_| self.damaged("trailer"))?);
            let crc = u32::from_le_bytes(t[8..].try_into().map_err(|_| self.damaged("trailer"))?);
            if (total, crc) != (self.total, self.crc) {
                return Err(self.damaged("trailer does not match the frames"));
            }
            if (total, crc) != self.expect {
                return Err(self.damaged(&format!(
                    "holds {total} bytes with CRC {crc:#010x}, the metadata says {} bytes with CRC {:#010x}",
                    self.expect.0, self.expect.1
                )));
            }
            let mut extra = [0u8; 1];
            if self.file.read(&mut extra).map_err(|e| io_err(&self.path, e))? != 0 {
                return Err(self.damaged("bytes after the trailer"));
            }
            self.done = true;
            return Ok(None);
        }
        let len = len as usize;
        if len == 0 || len > FILE_CHUNK {
            return Err(self.damaged(&format!("frame of {len} bytes")));
        }
        let mut seal = [0u8; checksum::OVERHEAD];
        self.file.read_exact(&mut seal).map_err(|e| self.damaged(&format!("truncated: {e}")))?;
        let tag = seal[0];
        let body = if tag == SNAPPY_TAG { &mut self.packed } else { &mut self.frame };
        body.resize(len, 0);
        let read = self.file.read_exact(body);
        read.map_err(|e| self.damaged(&format!("truncated: {e}")))?;
        // The seal covers the body as stored: compressed bytes are checked before they are decompressed.
        let body = if tag == SNAPPY_TAG { &self.packed } else { &self.frame };
        let stored = u32::from_le_bytes([seal[1], seal[2], seal[3], seal[4]]);
        let computed = crc32c(body);
        if !matches!(tag, checksum::TAG | SNAPPY_TAG) || stored != computed {
            return Err(self.damaged(&format!(
                "frame at payload offset {} fails its checksum (stored {stored:#010x}, computed {computed:#010x})",
                self.total
            )));
        }
        let computed = if tag == SNAPPY_TAG {
            let at = self.total;
            let n = snap::raw::decompress_len(&self.packed).map_err(|e| {
                self.damaged(&format!("frame at payload offset {at} does not decompress: {e}"))
            })?;
            if n == 0 || n > FILE_CHUNK {
                return Err(self.damaged(&format!("frame at payload offset {at} decompresses to {n} bytes")));
            }
            self.frame.resize(n, 0);
            let out = snap::raw::Decoder::new().decompress(&self.packed, &mut self.frame);
            out.map_err(|e| self.damaged(&format!("frame at payload offset {at} does not decompress: {e}")))?;
            // The wire's chunk CRC is the payload's.
            crc32c(&self.frame)
        } else {
            computed
        };
        self.total += self.frame.len() as u64;
        self.crc = crc32c_extend(self.crc, &self.frame);
        self.pos = self.frame.len();
        Ok(Some((&self.frame, computed)))
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.frame.len() {
            self.frame.clear();
            self.pos = 0;
            match self.next_chunk() {
                Ok(Some(_)) => self.pos = 0,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
        let n = out.len().min(self.frame.len() - self.pos);
        out[..n].copy_from_slice(&self.frame[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Something a snapshot can be read from more than once (restore checks everything before replacing).
pub trait SnapshotSource {
    /// A fresh reader over the snapshot bytes from the start. Damaged bytes read as an `InvalidData` error.
    fn open(&self) -> io::Result<Box<dyn Read + '_>>;
    /// The whole snapshot in memory (for small test state machines).
    fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open()?.read_to_end(&mut v)?;
        Ok(v)
    }
}

impl SnapshotSource for &[u8] {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(*self))
    }
}

/// A snapshot file as a [`SnapshotSource`].
pub struct FileSource<'a> {
    pub dir: &'a SnapDir,
    pub desc: Descriptor,
    /// The database the snapshot is restored into, flushed as the file is read (see [`Flusher`]).
    pub flush: Option<&'a Flusher>,
}

impl SnapshotSource for FileSource<'_> {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        let r = self
            .dir
            .reader(&self.desc)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(match self.flush {
            Some(f) => Box::new(FlushingRead { inner: r, flusher: f, read: 0 }),
            None => Box::new(r),
        })
    }
}

/// Flushes a file (the raft database) to disk every `every` bytes of snapshot read while a received
/// snapshot is restored into it. redb writes a big transaction's pages to the file as its write buffer
/// fills (half its cache) but fsyncs them only at commit: restoring a 455 MB snapshot (about 2 GB of
/// tables at 1.5 M objects) left gigabytes of dirty pages for one fsync, and on a disk shared with other
/// members that fsync holds up their small log fsyncs (ext4 ordered mode) past the election timeout.
/// Flushing pages that are not committed yet is safe: redb's commit makes them part of the database, a
/// crash before it leaves them unreferenced.
pub struct Flusher {
    file: File,
    every: u64,
    flushes: AtomicU64,
}

impl Flusher {
    /// Opens `path` (read-only is enough for `fdatasync`), flushing every [`FLUSH_EVERY`] bytes read.
    pub fn open(path: &Path) -> io::Result<Flusher> {
        Ok(Flusher { file: File::open(path)?, every: FLUSH_EVERY, flushes: AtomicU64::new(0) })
    }

    /// Flush every `bytes` read instead (tests).
    pub fn every(mut self, bytes: u64) -> Flusher {
        self.every = bytes.max(1);
        self
    }

    /// Flushes done so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

/// A snapshot reader that flushes its [`Flusher`] when a read crosses a multiple of `every` bytes (once
/// per read: the restore's reads are a record's fields, far smaller than `every`).
struct FlushingRead<'a, R> {
    inner: R,
    flusher: &'a Flusher,
    read: u64,
}

impl<R: Read> Read for FlushingRead<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let before = self.read;
        self.read += n as u64;
        if self.read / self.flusher.every > before / self.flusher.every {
            self.flusher.file.sync_data()?;
            self.flusher.flushes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Arc<SnapDir>, index: u64, data: &[u8]) -> (Descriptor, Hold) {
        let mut w = dir.create(index, 1).expect("create");
        w.write_all(data).expect("write");
        w.finish().expect("finish")
    }

    #[test]
    fn a_file_reads_back_chunk_by_chunk_and_matches_one_crc() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        let data: Vec<u8> = (0..(2 * FILE_CHUNK + 123)).map(|i| (i * 7 % 251) as u8).collect();
        let (desc, _h) = write(&dir, 5, &data);
        assert_eq!((desc.size, desc.crc), (data.len() as u64, crc32c(&data)));
        assert_eq!(Descriptor::decode(&desc.encode()).expect("decode"), desc);
        let mut r = dir.reader(&desc).expect("reader");
        let mut chunks = 0;
        while let Some((c, crc)) = r.next_chunk().expect("chunk") {
            assert!(c.len() <= FILE_CHUNK && crc == crc32c(c));
            chunks += 1;
        }
        assert_eq!(chunks, 3);
        let src = FileSource { dir: &dir, desc: desc.clone(), flush: None };
        assert_eq!(src.read_all().expect("read"), data);
        assert!(Descriptor::decode(b"huatuo-snapdesc1\0\0\0\0\0\0\0\0\0\0\0\0../etc.snap").is_err());
    }

    /// A source with a flusher yields the file's bytes unchanged and flushes once per `every` bytes read,
    /// on every pass; without one it never flushes.
    #[test]
    fn a_source_read_for_a_restore_flushes_the_database_every_so_many_bytes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        let data: Vec<u8> = (0..(3 * FILE_CHUNK + 5)).map(|i| (i * 13 % 251) as u8).collect();
        let (desc, _h) = write(&dir, 9, &data);
        let db = tmp.path().join("db");
        std::fs::write(&db, b"x").expect("db file");
        let flush = Flusher::open(&db).expect("flusher").every(FILE_CHUNK as u64);
        let src = FileSource { dir: &dir, desc: desc.clone(), flush: Some(&flush) };
        assert_eq!(src.read_all().expect("read"), data);
        assert_eq!(flush.flushes(), 3, "one per chunk-sized step, the 5-byte tail crosses none");
        assert_eq!(src.read_all().expect("read again"), data);
        assert_eq!(flush.flushes(), 6);
        let plain = FileSource { dir: &dir, desc, flush: None };
        assert_eq!(plain.read_all().expect("read"), data);
        assert_eq!(flush.flushes(), 6);
        assert!(Flusher::open(&tmp.path().join("missing")).is_err(), "a missing database is an error");
    }

    /// A big file is flushed to disk as it is written (one flush per FLUSH_EVERY payload bytes), and
    /// reads back whole.
    #[test]
    fn a_big_file_is_flushed_as_it_is_written() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        let data: Vec<u8> = (0..(2 * FLUSH_EVERY as usize + 5)).map(|i| (i % 253) as u8).collect();
        let mut w = dir.create(9, 1).expect("create");
        w.write_all(&data[..FLUSH_EVERY as usize - 1]).expect("write");
        assert_eq!(w.flushes(), 0, "under FLUSH_EVERY: nothing flushed yet");
        w.write_all(&data[FLUSH_EVERY as usize - 1..]).expect("write");
        assert_eq!(w.flushes(), 2);
        let (desc, _h) = w.finish().expect("finish");
        let src = FileSource { dir: &dir, desc, flush: None };
        assert_eq!(src.read_all().expect("read"), data);
    }

    /// Bytes no compressor shrinks (xorshift), for frames stored as they are.
    fn noise(n: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Compressible payloads are stored Snappy-compressed, incompressible ones as they are, both in one file;
    /// either reads back to the same payloads and CRCs, and the sizes the descriptor names are the payload's.
    #[test]
    fn frames_are_compressed_when_that_is_smaller() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        let json: Vec<u8> = (0..FILE_CHUNK as u64)
            .flat_map(|i| {
                format!("{{\"id\":\"disk/host-{}/d{}\",\"state\":\"GOOD\"}}", i % 9973, i % 12).into_bytes()
            })
            .take(2 * FILE_CHUNK)
            .collect();
        let mut data = json.clone();
        data.extend(noise(FILE_CHUNK));
        let mut w = dir.create(4, 1).expect("create");
        w.write_all(&data).expect("write");
        let (desc, _h) = w.finish().expect("finish");
        assert_eq!((desc.size, desc.crc), (data.len() as u64, crc32c(&data)));
        let file = std::fs::read(dir.path().join(&desc.name)).expect("read");
        let tags: Vec<u8> = {
            let (mut at, mut tags) = (MAGIC.len(), Vec::new());
            loop {
                let len = u32::from_le_bytes(file[at..at + 4].try_into().expect("len"));
                if len == END {
                    break tags;
                }
                tags.push(file[at + 4]);
                at += FRAME_HEAD + len as usize;
            }
        };
        assert_eq!(tags, vec![SNAPPY_TAG, SNAPPY_TAG, checksum::TAG], "JSON compressed, noise as is");
        assert!(
            file.len() < FILE_CHUNK + 2 * FILE_CHUNK / 3,
            "{} bytes for {} of payload",
            file.len(),
            data.len()
        );
        let src = FileSource { dir: &dir, desc, flush: None };
        assert_eq!(src.read_all().expect("read"), data);
    }

    #[test]
    fn damage_anywhere_in_a_file_is_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        // Compressed frames (a repeated byte) and frames as they are (noise).
        for (i, data) in [vec![42u8; FILE_CHUNK + 10], noise(FILE_CHUNK + 10)].into_iter().enumerate() {
            let (desc, _h) = write(&dir, 5 + i as u64, &data);
            let path = dir.path().join(&desc.name);
            let good = std::fs::read(&path).expect("read");
            let frame_tag = MAGIC.len() + 4;
            for at in [3, 20, frame_tag, frame_tag + 7, good.len() / 2, good.len() - 20, good.len() - 2] {
                let mut bad = good.clone();
                bad[at] ^= 0x10;
                std::fs::write(&path, &bad).expect("write");
                let e = dir.verify(&desc).expect_err("damage found");
                assert!(matches!(e, SnapError::Damaged(_)), "file {i}, byte {at}: {e}");
            }
            std::fs::write(&path, &good[..good.len() - 7]).expect("truncate");
            assert!(matches!(dir.verify(&desc), Err(SnapError::Damaged(_))));
            std::fs::remove_file(&path).expect("rm");
            let e = dir.verify(&desc).expect_err("missing");
            assert!(e.to_string().contains("missing"), "{e}");
        }
    }

    #[test]
    fn files_live_while_held_or_current_and_the_count_is_bounded() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = SnapDir::open(tmp.path()).expect("dir");
        let (a, ha) = write(&dir, 2, b"a");
        dir.set_current(Some(&a.name));
        drop(ha);
        assert_eq!(dir.files().expect("ls"), vec![a.name.clone()], "current stays without holds");
        let send = dir.hold(&a.name).expect("held for a send");
        let (b, hb) = write(&dir, 3, b"b");
        dir.set_current(Some(&b.name));
        drop(hb);
        assert_eq!(dir.files().expect("ls").len(), 2, "superseded but still being sent");
        drop(send);
        assert_eq!(dir.files().expect("ls"), vec![b.name.clone()], "deleted once the send let go");
        assert!(dir.hold(&a.name).is_none(), "a deleted file cannot be held");
        // At the limit: nothing new starts until a file is let go.
        let mut held = Vec::new();
        while dir.in_use() < MAX_SNAPSHOT_FILES {
            held.push(write(&dir, 10 + held.len() as u64, b"x").1);
        }
        let e = dir.create(99, 1).err().expect("refused at the limit");
        assert!(matches!(e, SnapError::Busy(_)), "{e}");
        assert_eq!(dir.files().expect("ls").len(), MAX_SNAPSHOT_FILES);
        held.pop();
        let w = dir.create(99, 1).expect("room again");
        drop(w);
        assert_eq!(dir.files().expect("ls").len(), MAX_SNAPSHOT_FILES - 1, "an unfinished .part is removed");
        // Leftovers of a crash go at the next open.
        let w = dir.create(100, 1).expect("create");
        w.abandon();
        drop(held);
        let again = SnapDir::open(tmp.path()).expect("reopen");
        assert!(again.files().expect("ls").iter().any(|n| n.ends_with(PART)));
        again.reset(Some(&b.name)).expect("reset");
        assert_eq!(again.files().expect("ls"), vec![b.name.clone()]);
    }
}
