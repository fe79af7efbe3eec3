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

/// A record read from /dev/kmsg is at most this long (the kernel's CONSOLE_EXT_LOG_MAX is 8 KiB; reading
/// with a smaller buffer fails with EINVAL, so the buffer must be at least this big).
pub const KMSG_RECORD_MAX: usize = 8192;
/// Most records one poll reads, so a flood cannot keep the checker from returning; the rest is read on
/// the next poll (the cursor makes that lossless as long as the ring buffer keeps them).
pub const MAX_RECORDS_PER_POLL: usize = 100_000;
/// Longest boot id kept (a UUID is 36 bytes).
const MAX_BOOT_ID_LEN: usize = 64;

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
    line: Vec<u8>,
    pending: Option<Vec<u8>>,
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
        LineFileSource { reader, line: Vec::new(), pending: None, partial: Vec::new() }
    }

    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
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
            return Ok(None);
        }
        Ok(Some(self.line.clone()))
    }
}

impl<R: BufRead + Send> KmsgSource for LineFileSource<R> {
    fn read_record(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(first) = self.next_line()? else {
            return Err(ErrorKind::WouldBlock.into());
        };
        let mut n = first.len().min(buf.len());
        buf[..n].copy_from_slice(&first[..n]);
        // attach dictionary lines
        while let Some(next) = self.next_line()? {
            if next.first() != Some(&b' ') {
                self.pending = Some(next);
                break;
            }
            if n < buf.len() {
                buf[n] = b'\n';
                n += 1;
                let k = next.len().min(buf.len() - n);
                buf[n..n + k].copy_from_slice(&next[..k]);
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

fn record_seq(rec: &[u8]) -> Option<u64> {
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
}
