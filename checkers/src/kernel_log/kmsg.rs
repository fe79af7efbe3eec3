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
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
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
/// Records the follower thread holds that the checker has not taken yet. When the checker is held up (a
/// slow outbox disk), the follower stops reading at this bound and the kernel's own ring buffer keeps the
/// rest, as it did when the log was polled (an overwrite is counted as loss through EPIPE). 4,096 records
/// are about 0.8 s of a 5,000 lines/s storm and at most ~1 MiB of memory.
pub const FOLLOW_QUEUE: usize = 4096;
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
/// After a look at a regular file that found records (but not a full chunk: a full one means more are
/// waiting and the follower reads on at once), the follower waits this long before looking again, so a
/// storm is read in ~50 passes a second rather than one pass plus one empty look every [`FILE_POLL`]
/// (500 + 500 a second). It adds at most this much latency to a line written during a storm, on files only
/// (the checker itself lingers longer than this under a storm: `agent::scheduler::WAKE_LINGER_MAX`).
pub const FILE_BUSY_POLL: Duration = Duration::from_millis(20);
/// Records one read pass of the follower hands on before it looks at its stop flag again.
const FOLLOW_CHUNK: usize = 256;

/// Where kmsg records come from. `read_record` behaves like `read(2)` on /dev/kmsg: one whole record per
/// call, `Err(BrokenPipe)` after records were overwritten, `Err(WouldBlock)` when nothing is pending.
pub trait KmsgSource: Send {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize>;
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

impl DevKmsg {
    /// The device opened blocking: each `read` waits for the next record (the follower's own thread).
    pub fn open_blocking(path: &Path) -> io::Result<DevKmsg> {
        Ok(DevKmsg { file: File::open(path)? })
    }
}

impl KmsgSource for DevKmsg {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
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

    /// Read pending records (at most `max`, capped at [`MAX_RECORDS_PER_POLL`]) and hand each to `f`
    /// (the whole record: header, message, dictionary lines). Returns how many were handed on; stops at
    /// `WouldBlock` or end of file.
    pub fn poll(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
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
            match record_seq(rec) {
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
            f(rec);
        }
        Ok(handed)
    }
}

impl KmsgSource for &mut dyn KmsgSource {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_record(buf)
    }
}

impl KmsgSource for Box<dyn KmsgSource> {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_record(buf)
    }
}

/// What the follower thread hands to the checker.
#[derive(Debug)]
pub enum Followed {
    /// One whole record and its sequence number (`None` for a record without a parsable header).
    Record { rec: Vec<u8>, seq: Option<u64> },
    /// Reading failed; the thread has ended.
    Failed(String),
}

/// Follows a kmsg source on its own thread, so a record is handed on when it arrives instead of at the
/// next poll: the real device is read blocking; a regular file is looked at again every [`FILE_POLL`] at
/// its end. Records go through a channel bounded by the queue size given to [`KmsgFollower::spawn`];
/// `wake` is called after each one (the agent wakes the kernel-log checker's loop with it).
///
/// The thread reads ahead of the checker, so the cursor to commit is not the reader's but that of the
/// last record the checker took ([`KmsgFollower::take`] returns it with each record).
pub struct KmsgFollower {
    rx: Receiver<Followed>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<KmsgStats>>,
}

impl KmsgFollower {
    /// Start the follower thread over `reader`. `blocking`: the source blocks until a record arrives (the
    /// device); otherwise an empty read means "look again after [`FILE_POLL`]".
    pub fn spawn(
        reader: KmsgReader<Box<dyn KmsgSource>>,
        blocking: bool,
        queue: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<KmsgFollower> {
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(reader.stats()));
        let (s, st) = (Arc::clone(&stop), Arc::clone(&stats));
        std::thread::Builder::new()
            .name("kmsg-follow".into())
            .spawn(move || follow(reader, blocking, tx, s, st, wake))?;
        Ok(KmsgFollower { rx, stop, stats })
    }

    /// The next record the thread has read, if any (never waits).
    pub fn take(&mut self) -> Option<Followed> {
        match self.rx.try_recv() {
            Ok(f) => Some(f),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Followed::Failed("kmsg follower ended".into())),
        }
    }

    /// What the reader saw so far (it reads ahead of what was taken).
    pub fn stats(&self) -> KmsgStats {
        *self.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for KmsgFollower {
    /// The thread ends at its next look at the flag or the channel: within [`FILE_POLL_MAX`] on a file, at the
    /// next record on the device (it is not joined: a blocking read cannot be interrupted portably).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow(
    mut reader: KmsgReader<Box<dyn KmsgSource>>,
    blocking: bool,
    tx: SyncSender<Followed>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<KmsgStats>>,
    wake: Arc<dyn Fn() + Send + Sync>,
) {
    let mut idle_wait = FILE_POLL;
    while !stop.load(Ordering::Relaxed) {
        let mut gone = false;
        let res = reader.poll(FOLLOW_CHUNK, |rec| {
            if gone {
                return;
            }
            // Blocks while the queue is full: the follower reads no further than the bound.
            if tx.send(Followed::Record { rec: rec.to_vec(), seq: record_seq(rec) }).is_err() {
                gone = true;
            } else {
                wake();
            }
        });
        *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reader.stats();
        match res {
            Err(e) => {
                // The checker sees the error on its next run; nothing more can be read from this source.
                if tx.send(Followed::Failed(e.to_string())).is_ok() {
                    wake();
                }
                return;
            }
            Ok(0) if !blocking => {
                std::thread::sleep(idle_wait);
                idle_wait = (idle_wait * 2).min(FILE_POLL_MAX);
            }
            Ok(n) => {
                idle_wait = FILE_POLL;
                if !blocking && n < FOLLOW_CHUNK {
                    std::thread::sleep(FILE_BUSY_POLL);
                }
            }
        }
        if gone {
            return;
        }
    }
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

    fn follow_file(path: &Path, queue: usize) -> (KmsgFollower, Arc<std::sync::atomic::AtomicUsize>) {
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        let src: Box<dyn KmsgSource> = Box::new(LineFileSource::open(path).unwrap());
        let reader = KmsgReader::new(src, "b", None);
        let wake = Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        (KmsgFollower::spawn(reader, false, queue, wake).unwrap(), woken)
    }

    /// Take records until `n` came or `deadline` passed.
    fn take_n(f: &mut KmsgFollower, n: usize, deadline: Duration) -> Vec<u64> {
        let until = std::time::Instant::now() + deadline;
        let mut out = Vec::new();
        while out.len() < n && std::time::Instant::now() < until {
            match f.take() {
                Some(Followed::Record { seq, .. }) => out.push(seq.unwrap()),
                Some(Followed::Failed(e)) => panic!("{e}"),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        out
    }

    #[test]
    fn follower_wakes_on_lines_appended_to_a_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        std::fs::write(&p, format!("{}\n", rec(1))).unwrap();
        let (mut f, woken) = follow_file(&p, FOLLOW_QUEUE);
        assert_eq!(take_n(&mut f, 1, Duration::from_secs(10)), vec![1]);
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(format!("{}\n{}\n", rec(2), rec(3)).as_bytes()).unwrap();
        assert_eq!(take_n(&mut f, 2, Duration::from_secs(10)), vec![2, 3]);
        assert!(woken.load(Ordering::SeqCst) >= 3, "wake is called for every record");
        assert_eq!(f.stats().records, 3);
    }

    #[test]
    fn follower_stops_reading_at_the_queue_bound_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kmsg");
        let text: String = (1..=50).map(|s| format!("{}\n", rec(s))).collect();
        std::fs::write(&p, text).unwrap();
        let (mut f, woken) = follow_file(&p, 4);
        // The thread hands on 4 records (one wake each), then blocks on the full queue.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while woken.load(Ordering::SeqCst) < 4 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(woken.load(Ordering::SeqCst), 4, "nothing handed on beyond the queue bound");
        let got = take_n(&mut f, 50, Duration::from_secs(10));
        assert_eq!(got, (1..=50).collect::<Vec<_>>(), "in order, none lost, none repeated");
    }

    #[test]
    fn follower_reports_a_read_error_once_and_ends() {
        let src: Box<dyn KmsgSource> = Box::new(Script::new(vec![Ok(rec(1)), Err(io::Error::other("boom"))]));
        let reader = KmsgReader::new(src, "b", None);
        let mut f = KmsgFollower::spawn(reader, false, 8, Arc::new(|| {})).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.len() < 2 && std::time::Instant::now() < until {
            match f.take() {
                Some(Followed::Record { seq, .. }) => seen.push(format!("rec {}", seq.unwrap())),
                Some(Followed::Failed(e)) => seen.push(format!("failed {e}")),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(seen, vec!["rec 1".to_string(), "failed boom".to_string()]);
    }
}
