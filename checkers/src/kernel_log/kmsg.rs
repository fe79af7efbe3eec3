//! Reading `/dev/kmsg`: one record per `read()`, `EPIPE` when the ring buffer overwrote records we had not
//! read yet (resync: the next read returns the oldest record still there; the gap in sequence numbers is
//! counted as loss), and a cursor (last sequence number + `boot_id`) persisted through a [`CursorStore`]
//! so that a restart of the agent neither repeats nor skips records within one boot, and starts over on a
//! new boot.
//!
//! The reader works on a [`KmsgSource`], so tests feed it records and errors (EPIPE, EAGAIN) directly;
//! [`DevKmsg`] is the real device and [`LineFileSource`] replays a recorded raw-kmsg file.

use std::fs::File;
use std::io::{self, BufRead, BufReader, ErrorKind, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A record read from /dev/kmsg is at most this long (the kernel's CONSOLE_EXT_LOG_MAX is 8 KiB; reading
/// with a smaller buffer fails with EINVAL, so the buffer must be at least this big).
pub const KMSG_RECORD_MAX: usize = 8192;
/// Most records one poll reads, so a flood cannot keep the checker from returning; the rest is read on
/// the next poll (the cursor makes that lossless as long as the ring buffer keeps them).
pub const MAX_RECORDS_PER_POLL: usize = 100_000;
/// Longest boot id kept (a UUID is 36 bytes).
const MAX_BOOT_ID_LEN: usize = 64;
/// Records one chunk holds at most. The follower thread hands records to the checker in chunks: one
/// channel send and one wake per chunk instead of per record, and no allocation per record (chunks are
/// recycled through a return channel, their buffers keep their capacity). A read pass that fills a chunk
/// hands it on at once and reads on; a pass that runs out of data hands on what it has.
pub const CHUNK_RECORDS: usize = 256;
/// Message bytes one chunk holds at most (a record's first line is at most [`KMSG_RECORD_MAX`], so any
/// record fits an empty chunk): bounds a chunk's buffer whatever the lines' length.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks that exist per follower (being filled, queued for the checker, or being read by it). When all
/// are full and untaken (the checker is held up: a slow outbox disk), the follower stops reading and the
/// kernel's own ring buffer keeps the rest, as it did when the log was polled (an overwrite is counted as
/// loss through EPIPE). 16 chunks of 256 records are 4,096 records, about 0.8 s of a 5,000 lines/s storm,
/// and at most 1 MiB of buffers (plus 64 KiB of record ends).
pub const FOLLOW_CHUNKS: usize = 16;
/// Longest a follower waits in one `poll(2)` on the device, or for a free chunk, before it looks at its
/// stop flag again: the thread of a dropped follower ends within this even when no record arrives.
pub const STOP_CHECK: Duration = Duration::from_millis(500);
/// How often the follower looks again at the end of a regular file (a recording, or the file a benchmark
/// appends to). A regular file never blocks a read, so this is a short bounded poll; the real device blocks
/// in `read(2)` and needs none.
pub const FILE_POLL: Duration = Duration::from_millis(2);
/// Longest wait between looks at the end of a quiet regular file: the poll interval doubles from
/// [`FILE_POLL`] after each look that found nothing, up to this (and is back at [`FILE_POLL`] after data).
/// An idle follower then wakes 50 times a second instead of 500 (measured with `huatuo bench agent`: 1.6%
/// of a core idle at a fixed 2 ms poll), at the price of up to this much latency for the first line after
/// a quiet spell, on files only.
pub const FILE_POLL_MAX: Duration = Duration::from_millis(20);
/// After a read pass that found records but ran out of them before filling a chunk (a full one means more
/// are waiting and the follower reads on at once), the follower waits this long before it reads again, on
/// the device as on a file: a storm is then read in ~25 passes (chunks, wakes) a second rather than one per
/// record (the device wakes `poll(2)` for every record) or one pass plus one empty look every
/// [`FILE_POLL`] (a file). The records wait meanwhile in the kernel's ring buffer (the device) or the file.
/// It adds at most this much latency to a line written within this of the previous one (the first line
/// after a quiet spell is handed on at once on the device); the checker itself lingers longer than this
/// under a storm (`agent::scheduler::WAKE_LINGER_MAX`). 40 ms rather than 20: storm CPU of the slim agent
/// median 1.75% vs 2.06% of a core (`huatuo bench agent --seconds 15`, 4 and 3 runs back to back on a quiet
/// machine), storm p99 to the subscriber 192.7 ms (`huatuo bench e2e`; floor 250 ms).
pub const BUSY_POLL: Duration = Duration::from_millis(40);

/// Where kmsg records come from. `read_record` behaves like `read(2)` on /dev/kmsg: one whole record per
/// call, `Err(BrokenPipe)` after records were overwritten, `Err(WouldBlock)` when nothing is pending.
pub trait KmsgSource: Send {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// A descriptor `poll(2)` can wait on for the next record (the device); `None` for a source that must
    /// be looked at again after a while (a regular file never blocks and is always "readable").
    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// The real `/dev/kmsg`, opened non-blocking.
#[derive(Debug)]
pub struct DevKmsg {
    file: File,
}

impl DevKmsg {
    pub fn open(path: &Path) -> io::Result<DevKmsg> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
        Ok(DevKmsg { file })
    }
}

impl KmsgSource for DevKmsg {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.file.as_fd())
    }
}

/// A recorded raw-kmsg file (`pri,seq,usec,flags;msg` per line, dictionary lines starting with a space):
/// each read returns one record; the end of the file reads as `WouldBlock` (nothing pending).
#[derive(Debug)]
pub struct LineFileSource<R> {
    reader: R,
    /// The line last read (without its newline); reused for every line, so following a file allocates
    /// nothing per line once the buffers have grown.
    line: Vec<u8>,
    /// `line` holds a line read ahead (the one after a record's dictionary lines), not yet handed on.
    pending: bool,
    /// The start of a line whose newline has not been written yet (a writer appending to the file may be
    /// caught between two pages of one write): held back until the rest arrives, never handed on torn.
    partial: Vec<u8>,
}

impl LineFileSource<BufReader<File>> {
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(LineFileSource::new(BufReader::new(File::open(path)?)))
    }
}

impl<R: BufRead + Send> LineFileSource<R> {
    pub fn new(reader: R) -> Self {
        LineFileSource { reader, line: Vec::new(), pending: false, partial: Vec::new() }
    }

    /// The next complete line into `self.line`; false when there is none yet.
    fn next_line(&mut self) -> io::Result<bool> {
        if std::mem::take(&mut self.pending) {
            return Ok(true);
        }
        self.line.clear();
        self.line.append(&mut self.partial);
        let cap = (KMSG_RECORD_MAX as u64 * 2).saturating_sub(self.line.len() as u64);
        (&mut self.reader).take(cap).read_until(b'\n', &mut self.line)?;
        if self.line.last() == Some(&b'\n') {
            self.line.pop();
        } else if self.line.len() as u64 >= KMSG_RECORD_MAX as u64 * 2 {
            // overlong line: drop the rest of it
            let mut sink = Vec::new();
            self.reader.read_until(b'\n', &mut sink)?;
        } else {
            // End of the file in the middle of a line (or nothing new at all): the writer has not
            // finished it; keep it for the next read.
            std::mem::swap(&mut self.partial, &mut self.line);
            return Ok(false);
        }
        Ok(true)
    }
}

impl<R: BufRead + Send> KmsgSource for LineFileSource<R> {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.next_line()? {
            return Err(ErrorKind::WouldBlock.into());
        }
        let mut n = self.line.len().min(buf.len());
        buf[..n].copy_from_slice(&self.line[..n]);
        // attach dictionary lines
        while self.next_line()? {
            if self.line.first() != Some(&b' ') {
                self.pending = true;
                break;
            }
            if n < buf.len() {
                buf[n] = b'\n';
                n += 1;
                let k = self.line.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&self.line[..k]);
                n += k;
            }
        }
        Ok(n)
    }
}

/// Where the reader stopped: the last sequence number handled, in which boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub boot_id: String,
    pub seq: u64,
}

impl Cursor {
    /// The text form kept in files and in the agent's KV: `BOOT_ID SEQ`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.boot_id, self.seq)
    }

    /// Parse [`encode`](Self::encode)'s form; `None` when malformed.
    pub fn decode(text: &str) -> Option<Cursor> {
        let mut it = text.split_whitespace();
        match (it.next(), it.next().and_then(|s| s.parse::<u64>().ok()), it.next()) {
            (Some(b), Some(seq), None) if valid_boot_id(b) => Some(Cursor { boot_id: b.to_string(), seq }),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor store {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("cursor store {path}: malformed cursor {text:?}")]
    Malformed { path: String, text: String },
}

/// Persistence of the kmsg cursor. The file store below is for the CLI and tests; the agent plugs in its
/// KV store.
pub trait CursorStore: Send {
    fn load(&mut self) -> Result<Option<Cursor>, CursorError>;
    fn save(&mut self, cursor: &Cursor) -> Result<(), CursorError>;
}

/// A cursor in a small text file (`BOOT_ID SEQ\n`), replaced atomically (write temp file, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileCursorStore {
    path: PathBuf,
}

impl FileCursorStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileCursorStore { path: path.into() }
    }
}

impl CursorStore for FileCursorStore {
    fn load(&mut self) -> Result<Option<Cursor>, CursorError> {
        let shown = || self.path.display().to_string();
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(CursorError::Io { path: shown(), err }),
        };
        let text = String::from_utf8_lossy(&text[..text.len().min(256)]).into_owned();
        match Cursor::decode(&text) {
            Some(c) => Ok(Some(c)),
            None => Err(CursorError::Malformed { path: shown(), text }),
        }
    }

    fn save(&mut self, c: &Cursor) -> Result<(), CursorError> {
        use std::io::Write;
        let io = |err| CursorError::Io { path: self.path.display().to_string(), err };
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(format!("{}\n", c.encode()).as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

fn valid_boot_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_BOOT_ID_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Read the boot id (`/proc/sys/kernel/random/boot_id`) below `root`.
pub fn read_boot_id(root: &Path) -> io::Result<String> {
    let text = std::fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))?;
    let id = text.trim();
    if valid_boot_id(id) {
        Ok(id.to_string())
    } else {
        Err(io::Error::new(ErrorKind::InvalidData, "malformed boot_id"))
    }
}

/// What the reader saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KmsgStats {
    /// Records handed on.
    pub records: u64,
    /// Records known lost: overwritten before we read them (EPIPE or a sequence gap, also across a
    /// restart within one boot).
    pub lost: u64,
    /// EPIPE errors (each is a resync).
    pub epipe: u64,
    /// Records skipped because the cursor says they were handled before a restart.
    pub replayed_skipped: u64,
    /// Records without a parsable `pri,seq,usec,flags;` header (handed on, but not tracked).
    pub malformed: u64,
    /// Times a [`KmsgFollower`] stopped reading because all its chunks were full and untaken (the checker
    /// was held up); it read on when one came back. Zero for a reader without a follower.
    pub full_waits: u64,
}

/// Reads records from a [`KmsgSource`] and keeps the cursor.
pub struct KmsgReader<S> {
    src: S,
    boot_id: String,
    /// Highest sequence number handled (from the cursor on restart within the same boot).
    last_seq: Option<u64>,
    buf: Vec<u8>,
    stats: KmsgStats,
}

/// The sequence number in a record's `pri,seq,usec,flags;` header.
pub fn record_seq(rec: &[u8]) -> Option<u64> {
    let semi = rec.iter().take(64).position(|&b| b == b';')?;
    let mut it = rec[..semi].split(|&b| b == b',');
    it.next()?;
    let s = it.next()?;
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl<S: KmsgSource> KmsgReader<S> {
    /// Start reading `src` in boot `boot_id`, resuming after `cursor` if it is from the same boot.
    pub fn new(src: S, boot_id: &str, cursor: Option<Cursor>) -> Self {
        let last_seq = cursor.filter(|c| c.boot_id == boot_id).map(|c| c.seq);
        KmsgReader {
            src,
            boot_id: boot_id.to_string(),
            last_seq,
            buf: vec![0; KMSG_RECORD_MAX],
            stats: KmsgStats::default(),
        }
    }

    /// The cursor to persist after the records handed out so far were handled.
    pub fn cursor(&self) -> Option<Cursor> {
        self.last_seq.map(|seq| Cursor { boot_id: self.boot_id.clone(), seq })
    }

    pub fn stats(&self) -> KmsgStats {
        self.stats
    }

    /// The source read (the follower waits on its [`KmsgSource::poll_fd`]).
    pub fn source(&self) -> &S {
        &self.src
    }

    /// Read pending records (at most `max`, capped at [`MAX_RECORDS_PER_POLL`]) and hand each to `f`
    /// (the whole record: header, message, dictionary lines). Returns how many were handed on; stops at
    /// `WouldBlock` or end of file.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        self.poll_seq(max, |rec, _| f(rec))
    }

    /// [`poll`](Self::poll), handing on each record's sequence number too (`None`: no parsable header).
    pub fn poll_seq(&mut self, max: usize, mut f: impl FnMut(&[u8], Option<u64>)) -> io::Result<usize> {
        let max = max.min(MAX_RECORDS_PER_POLL);
        let mut handed = 0;
        // Bounded: each iteration either hands a record on, skips one, or returns; EPIPE/EINTR retries
        // are bounded by the same count so a source that only ever errors cannot spin forever.
        let mut attempts = 0usize;
        while handed < max && attempts < max.saturating_mul(2).max(16) {
            attempts += 1;
            let n = match self.src.read_record(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                    // Overwritten before we read them. The next read resyncs to the oldest record left;
                    // the sequence gap tells how many were lost.
                    self.stats.epipe += 1;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let rec = &self.buf[..n.min(self.buf.len())];
            let seq = record_seq(rec);
            match seq {
                Some(seq) => {
                    match self.last_seq {
                        Some(last) if seq <= last => {
                            self.stats.replayed_skipped += 1;
                            continue;
                        }
                        Some(last) => self.stats.lost += seq - last - 1,
                        None => {}
                    }
                    self.last_seq = Some(seq);
                }
                None => self.stats.malformed += 1,
            }
            self.stats.records += 1;
            handed += 1;
            f(rec, seq);
        }
        Ok(handed)
    }
}

impl KmsgSource for &mut dyn KmsgSource {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_record(buf)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).poll_fd()
    }
}

impl KmsgSource for Box<dyn KmsgSource> {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_record(buf)
    }

    fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).poll_fd()
    }
}

/// Records handed from the follower thread in one piece: each record's first line (header and message;
/// the checker reads no dictionary lines) back to back in one buffer, with where each ends and its
/// sequence number. Read it with [`Chunk::records`], then give it back ([`KmsgFollower::give_back`]) so
/// the follower fills it again instead of allocating.
#[derive(Debug, Default)]
pub struct Chunk {
    bytes: Vec<u8>,
    /// End of each record in `bytes`, and its sequence number (`None`: no parsable header).
    ends: Vec<(usize, Option<u64>)>,
}

impl Chunk {
    /// Records in the order read, with their sequence numbers.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], Option<u64>)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(end, seq)| {
            let rec = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            (rec, seq)
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The sequence number of the last record that has one (where the cursor stands after this chunk).
    pub fn last_seq(&self) -> Option<u64> {
        self.ends.iter().rev().find_map(|&(_, seq)| seq)
    }

    /// Whether a record of `len` bytes may go in (an empty chunk takes any record).
    fn fits(&self, len: usize, limits: &FollowLimits) -> bool {
        self.ends.len() < limits.chunk_records
            && (self.ends.is_empty() || self.bytes.len() + len <= limits.chunk_bytes)
    }

    fn push(&mut self, rec: &[u8], seq: Option<u64>) {
        self.bytes.extend_from_slice(rec);
        self.ends.push((self.bytes.len(), seq));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// How many records a follower hands on at once and holds at most (tests make them small to reach the
/// bounds; the agent uses [`FollowLimits::default`]: [`FOLLOW_CHUNKS`] chunks of [`CHUNK_RECORDS`]
/// records and [`CHUNK_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowLimits {
    pub chunks: usize,
    pub chunk_records: usize,
    pub chunk_bytes: usize,
}

impl Default for FollowLimits {
    fn default() -> Self {
        FollowLimits { chunks: FOLLOW_CHUNKS, chunk_records: CHUNK_RECORDS, chunk_bytes: CHUNK_BYTES }
    }
}

/// What the follower thread hands to the checker.
#[derive(Debug)]
pub enum Followed {
    /// Records in the order read (never empty).
    Records(Chunk),
    /// Reading failed; the thread has ended.
    Failed(String),
}

/// Follows a kmsg source on its own thread, so a record is handed on when it arrives instead of at the
/// next poll: the device is read until it has nothing pending, then waited on with `poll(2)`; a regular
/// file is looked at again at its end after [`FILE_POLL`] (doubling up to [`FILE_POLL_MAX`]). After a pass
/// that found records, the follower waits [`BUSY_POLL`] before reading again, so a storm is read in
/// chunks. Records go to the checker in [`Chunk`]s through a channel; at most [`FollowLimits::chunks`]
/// exist, recycled through a return channel, and when all are full and untaken the follower stops
/// reading. `wake` is called after each chunk (the agent wakes the kernel-log checker's loop with it).
///
/// The thread reads ahead of the checker, so the cursor to commit is not the reader's but that of the
/// last record the checker took ([`Chunk::last_seq`] of the chunks taken).
pub struct KmsgFollower {
    rx: Receiver<Followed>,
    recycle: SyncSender<Chunk>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<KmsgStats>>,
}

impl KmsgFollower {
    /// Start the follower thread over `reader`, handing records on in chunks as `limits` says (each
    /// limit at least 1).
    pub fn spawn(
        reader: KmsgReader<Box<dyn KmsgSource>>,
        limits: FollowLimits,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<KmsgFollower> {
        let limits = FollowLimits {
            chunks: limits.chunks.max(1),
            chunk_records: limits.chunk_records.max(1),
            chunk_bytes: limits.chunk_bytes.max(1),
        };
        // Neither channel ever holds more than the chunks that exist, so no send on them blocks.
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.chunks + 1);
        let (recycle, recycled) = std::sync::mpsc::sync_channel(limits.chunks);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(reader.stats()));
        let thread = Thread { reader, limits, tx, recycled, made: 0, stop: Arc::clone(&stop), wake };
        let st = Arc::clone(&stats);
        std::thread::Builder::new().name("kmsg-follow".into()).spawn(move || thread.run(&st))?;
        Ok(KmsgFollower { rx, recycle, stop, stats })
    }

    /// The next chunk of records the thread has read, if any (never waits).
    pub fn take(&mut self) -> Option<Followed> {
        match self.rx.try_recv() {
            Ok(f) => Some(f),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Followed::Failed("kmsg follower ended".into())),
        }
    }

    /// Hand a chunk that was read back to the thread, to be filled again.
    pub fn give_back(&mut self, mut chunk: Chunk) {
        chunk.clear();
        // Never full (no more chunks exist than the channel holds); when the thread has ended the chunk
        // is simply freed.
        if let Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) = self.recycle.try_send(chunk) {
            drop(c);
        }
    }

    /// What the reader saw so far (it reads ahead of what was taken).
    pub fn stats(&self) -> KmsgStats {
        *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for KmsgFollower {
    /// The thread ends at its next look at the flag or the channels: within [`STOP_CHECK`] when it waits
    /// (on the device, or for a chunk), within [`FILE_POLL_MAX`] on a quiet file.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The follower thread's side.
struct Thread {
    reader: KmsgReader<Box<dyn KmsgSource>>,
    limits: FollowLimits,
    tx: SyncSender<Followed>,
    recycled: Receiver<Chunk>,
    /// Chunks allocated so far (at most `limits.chunks`).
    made: usize,
    stop: Arc<AtomicBool>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

/// How a wait for the device ended.
enum Ready {
    /// A record is pending (or an overwrite: the next read says EPIPE and resyncs).
    Read,
    /// Nothing came within [`STOP_CHECK`]: look at the stop flag and wait again.
    TimedOut,
    /// The other end hung up (never the kernel's device; a socket in tests): nothing more will come.
    HungUp,
}

impl Thread {
    fn run(mut self, stats: &Mutex<KmsgStats>) {
        let mut full_waits = 0u64;
        let mut idle_wait = FILE_POLL;
        // The device reported readiness and the pass after it read nothing (e.g. a hang-up, or an
        // overwrite seen as EPIPE with nothing after it): back off like a file instead of spinning.
        let mut ready_but_empty = false;
        let mut hung_up = false;
        let mut spare: Option<Chunk> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let mut chunk = match spare.take() {
                Some(c) => c,
                None => match take_chunk(
                    &self.recycled,
                    &mut self.made,
                    &self.limits,
                    &self.stop,
                    &mut full_waits,
                    stats,
                ) {
                    Some(c) => c,
                    None => return,
                },
            };
            let mut gone = false;
            let (reader, limits) = (&mut self.reader, self.limits);
            let (tx, wake, recycled, made, stop) =
                (&self.tx, &self.wake, &self.recycled, &mut self.made, &self.stop);
            let res = reader.poll_seq(limits.chunk_records, |rec, seq| {
                if gone {
                    return;
                }
                let first = rec.iter().position(|&b| b == b'\n').map_or(rec, |end| &rec[..end]);
                if !chunk.fits(first.len(), &limits) {
                    // Full by bytes: hand it on and go on in another (waiting for one at the bound).
                    let full = std::mem::take(&mut chunk);
                    if !hand_on(tx, wake, full) {
                        gone = true;
                        return;
                    }
                    match take_chunk(recycled, made, &limits, stop, &mut full_waits, stats) {
                        Some(c) => chunk = c,
                        None => {
                            gone = true;
                            return;
                        }
                    }
                }
                chunk.push(first, seq);
            });
            publish(stats, &self.reader, full_waits);
            let read = match res {
                Ok(n) => n,
                Err(e) => {
                    // What was read goes on first; the checker sees the error on its next run; nothing more
                    // can be read from this source.
                    if (chunk.is_empty() || hand_on(&self.tx, &self.wake, chunk))
                        && self.tx.send(Followed::Failed(e.to_string())).is_ok()
                    {
                        (self.wake)();
                    }
                    return;
                }
            };
            if gone {
                return;
            }
            if chunk.is_empty() {
                spare = Some(chunk);
            } else if !hand_on(&self.tx, &self.wake, chunk) {
                return;
            }
            if read >= self.limits.chunk_records {
                // Stopped at the chunk's bound, not at the end of the data: read on at once.
                idle_wait = FILE_POLL;
                ready_but_empty = false;
                continue;
            }
            if read > 0 {
                idle_wait = FILE_POLL;
                ready_but_empty = false;
                std::thread::sleep(BUSY_POLL);
                continue;
            }
            if hung_up {
                if self.tx.send(Followed::Failed("kmsg source hung up".into())).is_ok() {
                    (self.wake)();
                }
                return;
            }
            if self.reader.source().poll_fd().is_some() && !ready_but_empty {
                match self.wait_readable() {
                    Ok(Ready::Read) => ready_but_empty = true,
                    Ok(Ready::TimedOut) => {}
                    Ok(Ready::HungUp) => hung_up = true,
                    Err(e) => {
                        if self.tx.send(Followed::Failed(format!("poll: {e}"))).is_ok() {
                            (self.wake)();
                        }
                        return;
                    }
                }
            } else {
                std::thread::sleep(idle_wait);
                idle_wait = (idle_wait * 2).min(FILE_POLL_MAX);
                ready_but_empty = false;
            }
        }
    }

    /// Wait up to [`STOP_CHECK`] until the device has a record.
    fn wait_readable(&self) -> io::Result<Ready> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let Some(fd) = self.reader.source().poll_fd() else {
            return Ok(Ready::Read);
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(STOP_CHECK).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(Ready::TimedOut),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        // POLLERR from /dev/kmsg means records were overwritten: the next read says EPIPE and resyncs.
        if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            return Ok(Ready::HungUp);
        }
        Ok(Ready::Read)
    }
}

/// Send a non-empty chunk to the checker and wake it; false when the checker is gone.
fn hand_on(tx: &SyncSender<Followed>, wake: &Arc<dyn Fn() + Send + Sync>, chunk: Chunk) -> bool {
    if tx.send(Followed::Records(chunk)).is_err() {
        return false;
    }
    wake();
    true
}

/// An empty chunk to fill: one given back, a new one while fewer than `limits.chunks` exist, else wait
/// (reading nothing meanwhile) until the checker gives one back. None when the follower should end.
fn take_chunk(
    recycled: &Receiver<Chunk>,
    made: &mut usize,
    limits: &FollowLimits,
    stop: &AtomicBool,
    full_waits: &mut u64,
    stats: &Mutex<KmsgStats>,
) -> Option<Chunk> {
    match recycled.try_recv() {
        Ok(c) => return Some(c),
        Err(TryRecvError::Disconnected) => return None,
        Err(TryRecvError::Empty) => {}
    }
    if *made < limits.chunks {
        *made += 1;
        return Some(Chunk::default());
    }
    *full_waits += 1;
    stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner).full_waits = *full_waits;
    // Bounded by the stop flag: each wait is at most STOP_CHECK.
    while !stop.load(Ordering::Relaxed) {
        match recycled.recv_timeout(STOP_CHECK) {
            Ok(c) => return Some(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
    None
}

fn publish(stats: &Mutex<KmsgStats>, reader: &KmsgReader<Box<dyn KmsgSource>>, full_waits: u64) {
    *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        KmsgStats { full_waits, ..reader.stats() };
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A scripted source: records and errors in order, then WouldBlock.
    struct Script(VecDeque<io::Result<Vec<u8>>>);

    impl Script {
        fn new(items: Vec<io::Result<String>>) -> Self {
            Script(items.into_iter().map(|r| r.map(String::into_bytes)).collect())
        }

        fn records(seqs: impl IntoIterator<Item = u64>) -> Self {
            Script::new(seqs.into_iter().map(|s| Ok(rec(s))).collect())
        }
    }

    impl KmsgSource for Script {
        fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                Some(Ok(r)) => {
                    buf[..r.len()].copy_from_slice(&r);
                    Ok(r.len())
                }
                Some(Err(e)) => Err(e),
                None => Err(ErrorKind::WouldBlock.into()),
            }
        }
    }

    fn rec(seq: u64) -> String {
        format!("6,{seq},{},-;message {seq}", seq * 1000)
    }

    fn seqs(r: &mut KmsgReader<Script>) -> Vec<u64> {
        let mut out = Vec::new();
        r.poll(usize::MAX, |b| out.push(record_seq(b).unwrap())).unwrap();
        out
    }

    #[test]
    fn epipe_resyncs_and_counts_the_loss() {
        let src = Script::new(vec![
            Ok(rec(1)),
            Ok(rec(2)),
            Err(ErrorKind::BrokenPipe.into()),
            Ok(rec(7)),
            Ok(rec(8)),
        ]);
        let mut r = KmsgReader::new(src, "boot-a", None);
        assert_eq!(seqs(&mut r), vec![1, 2, 7, 8]);
        let st = r.stats();
        assert_eq!((st.epipe, st.lost, st.records), (1, 4, 4));
        assert_eq!(r.cursor(), Some(Cursor { boot_id: "boot-a".into(), seq: 8 }));
    }

    #[test]
    fn only_errors_does_not_spin() {
        let src = Script((0..1000).map(|_| Err(ErrorKind::BrokenPipe.into())).collect());
        let mut r = KmsgReader::new(src, "b", None);
        assert_eq!(r.poll(10, |_| {}).unwrap(), 0);
        assert!(r.stats().epipe <= 20);
    }

    #[test]
    fn hard_errors_are_returned() {
        let mut r = KmsgReader::new(Script::new(vec![Err(io::Error::other("boom"))]), "b", None);
        assert!(r.poll(10, |_| {}).is_err());
    }

    #[test]
    fn cursor_persists_across_restart_same_boot_no_repeat_no_skip() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileCursorStore::new(dir.path().join("kmsg.cursor"));
        assert_eq!(store.load().unwrap(), None);

        // first run reads 1..=3 and saves
        let src = Script::records(1..=3);
        let mut r = KmsgReader::new(src, "boot-a", store.load().unwrap());
        assert_eq!(seqs(&mut r), vec![1, 2, 3]);
        store.save(&r.cursor().unwrap()).unwrap();

        // restart: the device replays the whole ring buffer (1..=6); only 4..=6 come out
        let src = Script::records(1..=6);
        let mut r = KmsgReader::new(src, "boot-a", store.load().unwrap());
        assert_eq!(seqs(&mut r), vec![4, 5, 6]);
        assert_eq!(r.stats().replayed_skipped, 3);
        assert_eq!(r.stats().lost, 0);
        store.save(&r.cursor().unwrap()).unwrap();
        assert_eq!(store.load().unwrap(), Some(Cursor { boot_id: "boot-a".into(), seq: 6 }));

        // a restart after records 7..=9 were overwritten: 10 comes out and the loss is counted
        let src = Script::records([10]);
        let mut r = KmsgReader::new(src, "boot-a", store.load().unwrap());
        assert_eq!(seqs(&mut r), vec![10]);
        assert_eq!(r.stats().lost, 3);
    }

    #[test]
    fn new_boot_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileCursorStore::new(dir.path().join("c"));
        store.save(&Cursor { boot_id: "boot-a".into(), seq: 500 }).unwrap();
        let src = Script::records(1..=3);
        let mut r = KmsgReader::new(src, "boot-b", store.load().unwrap());
        assert_eq!(seqs(&mut r), vec![1, 2, 3]);
        assert_eq!(r.stats().lost, 0);
        assert_eq!(r.cursor().unwrap().boot_id, "boot-b");
    }

    #[test]
    fn malformed_cursor_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        for bad in ["", "boot", "boot x", "boot 1 2", "bo/ot 1"] {
            std::fs::write(&p, bad).unwrap();
            assert!(matches!(FileCursorStore::new(&p).load(), Err(CursorError::Malformed { .. })), "{bad:?}");
        }
    }

    /// A reader over a growing buffer, like a file another process appends to.
    struct Growing(std::sync::Arc<std::sync::Mutex<Vec<u8>>>, usize);

    impl Read for Growing {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let data = self.0.lock().unwrap();
            let n = out.len().min(data.len() - self.1);
            out[..n].copy_from_slice(&data[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn line_file_source_holds_back_a_torn_last_line() {
        let data = std::sync::Arc::new(std::sync::Mutex::new(b"6,1,100,-;first\n6,2,200,-;sec".to_vec()));
        let mut src = LineFileSource::new(BufReader::new(Growing(data.clone(), 0)));
        let mut r = KmsgReader::new(&mut src as &mut dyn KmsgSource, "b", None);
        let mut recs = Vec::new();
        r.poll(10, |b| recs.push(String::from_utf8_lossy(b).into_owned())).unwrap();
        assert_eq!(recs, vec!["6,1,100,-;first"], "the torn line is not handed on");
        data.lock().unwrap().extend_from_slice(b"ond\n");
        r.poll(10, |b| recs.push(String::from_utf8_lossy(b).into_owned())).unwrap();
        assert_eq!(recs, vec!["6,1,100,-;first", "6,2,200,-;second"]);
        assert_eq!(r.stats().malformed, 0);
    }

    #[test]
    fn cursor_text_round_trip() {
        let c = Cursor { boot_id: "b-1".into(), seq: 42 };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("b-1 x"), None);
    }

    #[test]
    fn line_file_source_attaches_dictionary_lines() {
        let text = "6,1,100,-;sd 0:0:0:0: [sda] x\n SUBSYSTEM=scsi\n DEVICE=+scsi:0:0:0:0\n6,2,200,-;next\n";
        let mut src = LineFileSource::new(io::Cursor::new(text.as_bytes().to_vec()));
        let mut r = KmsgReader::new(&mut src as &mut dyn KmsgSource, "b", None);
        let mut recs = Vec::new();
        r.poll(10, |b| recs.push(String::from_utf8_lossy(b).into_owned())).unwrap();
        assert_eq!(
            recs,
            vec!["6,1,100,-;sd 0:0:0:0: [sda] x\n SUBSYSTEM=scsi\n DEVICE=+scsi:0:0:0:0", "6,2,200,-;next"]
        );
    }

    type Woken = Arc<std::sync::atomic::AtomicUsize>;

    fn wake_counter() -> (Woken, Arc<dyn Fn() + Send + Sync>) {
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        let wake = move || {
            w.fetch_add(1, Ordering::SeqCst);
        };
        (woken, Arc::new(wake))
    }

    fn follow_file(path: &Path, limits: FollowLimits) -> (KmsgFollower, Woken) {
        let (woken, wake) = wake_counter();
        let src: Box<dyn KmsgSource> = Box::new(LineFileSource::open(path).unwrap());
        let reader = KmsgReader::new(src, "b", None);
        (KmsgFollower::spawn(reader, limits, wake).unwrap(), woken)
    }

    /// Take chunks until `n` records came or `deadline` passed; each chunk is given back after reading.
    /// Returns the records (as text) and the chunks they came in.
    fn take_chunks(
        f: &mut KmsgFollower,
        n: usize,
        deadline: Duration,
    ) -> (Vec<(String, Option<u64>)>, usize) {
        let until = std::time::Instant::now() + deadline;
        let (mut out, mut chunks) = (Vec::new(), 0);
        while out.len() < n && std::time::Instant::now() < until {
            match f.take() {
                Some(Followed::Records(c)) => {
                    assert!(!c.is_empty(), "no empty chunk is handed on");
                    chunks += 1;
                    out.extend(c.records().map(|(r, s)| (String::from_utf8_lossy(r).into_owned(), s)));
                    f.give_back(c);
                }
                Some(Followed::Failed(e)) => panic!("{e}"),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        (out, chunks)
    }

    fn take_n(f: &mut KmsgFollower, n: usize, deadline: Duration) -> Vec<u64> {
        take_chunks(f, n, deadline).0.into_iter().map(|(_, s)| s.unwrap()).collect()
    }

    /// Wait until `cond` holds or 10 s passed.
    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            if std::time::Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[test]
    fn follower_wakes_on_lines_appended_to_a_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        std::fs::write(&p, format!("{}\n", rec(1))).unwrap();
        let (mut f, woken) = follow_file(&p, FollowLimits::default());
        assert_eq!(take_n(&mut f, 1, Duration::from_secs(10)), vec![1]);
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(format!("{}\n{}\n", rec(2), rec(3)).as_bytes()).unwrap();
        assert_eq!(take_n(&mut f, 2, Duration::from_secs(10)), vec![2, 3]);
        let w = woken.load(Ordering::SeqCst);
        assert!((2..=3).contains(&w), "one wake per chunk handed on, not per record or per look: {w}");
        assert_eq!(f.stats().records, 3);
    }

    #[test]
    fn follower_stops_reading_at_the_chunk_bound_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        let text: String = (1..=50).map(|s| format!("{}\n", rec(s))).collect();
        std::fs::write(&p, text).unwrap();
        let limits = FollowLimits { chunks: 2, chunk_records: 4, chunk_bytes: CHUNK_BYTES };
        let (mut f, woken) = follow_file(&p, limits);
        // The thread fills both chunks (one wake each), then waits for one to come back, reading nothing.
        assert!(wait_for(|| f.stats().full_waits >= 1), "the follower reached the bound");
        assert_eq!(f.stats().records, 8, "nothing read beyond 2 chunks of 4 records");
        assert_eq!(woken.load(Ordering::SeqCst), 2, "one wake per chunk");
        let (got, chunks) = take_chunks(&mut f, 50, Duration::from_secs(10));
        let seqs: Vec<u64> = got.iter().map(|(_, s)| s.unwrap()).collect();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "in order, none lost, none repeated");
        assert_eq!(chunks, 13, "50 records in chunks of at most 4");
        assert!(f.stats().full_waits >= 2, "held at the bound again while the test was taking");
    }

    #[test]
    fn a_chunk_holds_at_most_its_bytes_and_an_overlong_record_goes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        let long = "x".repeat(300);
        let mut text = String::new();
        for s in 1..=20u64 {
            // records 1..=20 of 20-22 bytes, record 10 of more than the chunk's 100 bytes
            if s == 10 {
                text.push_str(&format!("6,{s},0,-;{long}\n"));
            } else {
                text.push_str(&format!("{}\n", rec(s)));
            }
        }
        std::fs::write(&p, text).unwrap();
        let limits = FollowLimits { chunks: 2, chunk_records: 256, chunk_bytes: 100 };
        let (mut f, _) = follow_file(&p, limits);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut seqs = Vec::new();
        while seqs.len() < 20 && std::time::Instant::now() < until {
            let Some(Followed::Records(c)) = f.take() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let bytes: usize = c.records().map(|(r, _)| r.len()).sum();
            let has_long = c.records().any(|(r, _)| r.len() > 100);
            assert!(
                bytes <= 100 || (has_long && c.len() == 1),
                "chunk of {bytes} bytes, {} records",
                c.len()
            );
            seqs.extend(c.records().map(|(_, s)| s.unwrap()));
            f.give_back(c);
        }
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn a_followed_record_is_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        std::fs::write(&p, "6,1,100,-;sd 0:0:0:0: [sda] x\n SUBSYSTEM=scsi\n6,2,200,-;next\n").unwrap();
        let (mut f, _) = follow_file(&p, FollowLimits::default());
        let (got, _) = take_chunks(&mut f, 2, Duration::from_secs(10));
        assert_eq!(
            got,
            vec![
                ("6,1,100,-;sd 0:0:0:0: [sda] x".to_string(), Some(1)),
                ("6,2,200,-;next".to_string(), Some(2))
            ]
        );
    }

    #[test]
    fn follower_reports_a_read_error_once_and_ends() {
        let src: Box<dyn KmsgSource> = Box::new(Script::new(vec![Ok(rec(1)), Err(io::Error::other("boom"))]));
        let reader = KmsgReader::new(src, "b", None);
        let mut f = KmsgFollower::spawn(reader, FollowLimits::default(), Arc::new(|| {})).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.len() < 2 && std::time::Instant::now() < until {
            match f.take() {
                Some(Followed::Records(c)) => {
                    seen.extend(c.records().map(|(_, s)| format!("rec {}", s.unwrap())));
                    f.give_back(c);
                }
                Some(Followed::Failed(e)) => seen.push(format!("failed {e}")),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(seen, vec!["rec 1".to_string(), "failed boom".to_string()]);
    }

    /// A device-like source: one end of a SEQPACKET socket pair (one record per read, `poll(2)`-able,
    /// `EAGAIN` when empty), as `/dev/kmsg` opened non-blocking; the test writes records to the other end.
    fn device_pair() -> (std::os::fd::OwnedFd, DevKmsg) {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_NONBLOCK).unwrap();
        (ours, DevKmsg { file: File::from(theirs) })
    }

    fn send(fd: &std::os::fd::OwnedFd, seq: u64) {
        assert_eq!(nix::unistd::write(fd, rec(seq).as_bytes()).unwrap(), rec(seq).len());
    }

    #[test]
    fn follower_waits_on_the_device_and_hands_on_what_arrives() {
        let (ours, dev) = device_pair();
        let (woken, wake) = wake_counter();
        let src: Box<dyn KmsgSource> = Box::new(dev);
        let mut f =
            KmsgFollower::spawn(KmsgReader::new(src, "b", None), FollowLimits::default(), wake).unwrap();
        for s in 1..=3 {
            send(&ours, s);
        }
        assert_eq!(take_n(&mut f, 3, Duration::from_secs(10)), vec![1, 2, 3]);
        // After a quiet spell (the thread waits in poll(2)), a lone record is handed on.
        assert!(wait_for(|| woken.load(Ordering::SeqCst) >= 1));
        send(&ours, 4);
        assert_eq!(take_n(&mut f, 1, Duration::from_secs(10)), vec![4]);
        assert!(woken.load(Ordering::SeqCst) <= 4, "one wake per chunk");
        // The other end goes away: what was pending comes out, then the follower says so and ends.
        send(&ours, 5);
        drop(ours);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while std::time::Instant::now() < until {
            match f.take() {
                Some(Followed::Records(c)) => {
                    seen.extend(c.records().map(|(_, s)| format!("rec {}", s.unwrap())));
                    f.give_back(c);
                }
                Some(Followed::Failed(e)) => {
                    seen.push(e);
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(seen, vec!["rec 5".to_string(), "kmsg source hung up".to_string()]);
    }

    #[test]
    fn a_dropped_follower_waiting_on_a_quiet_device_ends_within_the_stop_check() {
        let (ours, dev) = device_pair();
        let (_, wake) = wake_counter();
        let src: Box<dyn KmsgSource> = Box::new(dev);
        let f =
            KmsgFollower::spawn(KmsgReader::new(src, "b", None), FollowLimits::default(), Arc::clone(&wake))
                .unwrap();
        assert!(wait_for(|| Arc::strong_count(&wake) == 2), "the thread holds the wake");
        drop(f);
        // No record arrives: the thread notices the flag when its poll(2) times out (STOP_CHECK) and lets
        // go of its wake (and its source). A blocking read would wait for the next record forever.
        assert!(wait_for(|| Arc::strong_count(&wake) == 1), "the thread ended");
        drop(ours);
    }
}
