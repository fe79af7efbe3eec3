//! The file ticket sink: one JSON line per ticket (the webhook body plus `"ticket": "file-N"`), appended and
//! fsync'd before the filing counts. For tests and simple setups (a cron job or log shipper picks the lines
//! up). It never writes a second line for an idempotency key: opening scans the file (up to
//! [`MAX_SCAN_BYTES`]) for the keys already there, so the dedupe survives a restart. A corrupt line (torn
//! by a crash, edited by hand) is reported with its line number and skipped; the other lines still count.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Filed, SinkError, TicketRequest, TicketSink, cut, valid_ticket_id};

/// Largest ticket file opened (and grown): the whole file is scanned on open to rebuild the dedupe set, and
/// 64 MiB is ~100,000 tickets, years of repairs for a large fleet. Rotate the file (move it away while the
/// master is stopped) before it gets there; a file over the limit is refused, never half-scanned.
pub const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Corrupt lines listed in the open report (the count is always exact); more would only flood the log.
pub const MAX_REPORTED_CORRUPT: usize = 100;
/// Longest error text kept per corrupt line.
const MAX_CORRUPT_ERROR_LEN: usize = 200;

/// Why the ticket file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileSinkError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is {size} bytes, over the {limit}-byte scan limit; rotate it (move it away) and restart")]
    TooBig { path: PathBuf, size: u64, limit: u64 },
}

/// A line of the file that is not a ticket record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptLine {
    /// 1-based line number.
    pub line: usize,
    pub error: String,
}

/// What opening the file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Non-empty lines read.
    pub lines: usize,
    /// Distinct idempotency keys already filed.
    pub tickets: usize,
    /// All corrupt lines counted ...
    pub corrupt_count: usize,
    /// ... the first [`MAX_REPORTED_CORRUPT`] of them listed.
    pub corrupt: Vec<CorruptLine>,
    /// The file did not end with a newline (a torn last write); the next line starts on a fresh line.
    pub torn_tail: bool,
}

/// What is read back from a line: the rest of the body is for whoever consumes the file.
#[derive(Deserialize)]
struct LineKey {
    ticket: String,
    idempotency_key: String,
}

#[derive(Serialize)]
struct LineOut<'a> {
    ticket: &'a str,
    schema: u32,
    #[serde(flatten)]
    req: &'a TicketRequest,
}

struct Inner {
    file: File,
    size: u64,
    limit: u64,
    /// idempotency key -> ticket id, for every key in the file.
    keys: BTreeMap<String, String>,
    next: u64,
    /// The file does not end with '\n' (torn write before open, or a failed write since).
    needs_newline: bool,
    /// A line was written but its fsync failed: sync before answering anything else.
    unsynced: bool,
}

/// Appends tickets to a JSON-lines file.
#[derive(Clone)]
pub struct FileSink {
    path: PathBuf,
    inner: Arc<Mutex<Inner>>,
    report: OpenReport,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink").field("path", &self.path).field("report", &self.report).finish()
    }
}

impl FileSink {
    /// Open (or create) `path` and scan it for filed keys. Corrupt lines are logged and listed in
    /// [`FileSink::report`].
    pub fn open(path: &Path) -> Result<FileSink, FileSinkError> {
        Self::open_with_limit(path, MAX_SCAN_BYTES)
    }

    /// [`FileSink::open`] with a smaller size limit (tests of the limit).
    pub fn open_with_limit(path: &Path, limit: u64) -> Result<FileSink, FileSinkError> {
        let io = |source| FileSinkError::Io { path: path.to_path_buf(), source };
        let existed = path.exists();
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > limit {
            return Err(FileSinkError::TooBig { path: path.to_path_buf(), size, limit });
        }
        if !existed {
            // Make the new file's directory entry durable too, or a crash could lose the whole file.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let mut content = Vec::new();
        // `take`: the file may grow between metadata and read (another writer); never read past the limit.
        (&mut file).take(limit.saturating_add(1)).read_to_end(&mut content).map_err(io)?;
        if content.len() as u64 > limit {
            return Err(FileSinkError::TooBig {
                path: path.to_path_buf(),
                size: content.len() as u64,
                limit,
            });
        }
        let (keys, next, report) = scan(&content);
        for c in &report.corrupt {
            let p = path.display();
            tracing::warn!(path = %p, line = c.line, error = %c.error, "corrupt line in ticket file");
        }
        if report.corrupt_count > report.corrupt.len() {
            let (p, count) = (path.display(), report.corrupt_count);
            tracing::warn!(path = %p, count, "more corrupt lines in ticket file");
        }
        let inner = Inner {
            file,
            size: content.len() as u64,
            limit,
            keys,
            next,
            needs_newline: report.torn_tail,
            unsynced: false,
        };
        Ok(FileSink { path: path.to_path_buf(), inner: Arc::new(Mutex::new(inner)), report })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening the file found (corrupt lines, torn tail, tickets).
    pub fn report(&self) -> &OpenReport {
        &self.report
    }
}

/// Keys and the next ticket number from the file's bytes.
fn scan(content: &[u8]) -> (BTreeMap<String, String>, u64, OpenReport) {
    let mut report =
        OpenReport { torn_tail: !content.is_empty() && !content.ends_with(b"\n"), ..Default::default() };
    let mut keys = BTreeMap::new();
    let mut max_n = 0u64;
    for (i, raw) in content.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        report.lines += 1;
        let parsed = serde_json::from_slice::<LineKey>(raw).map_err(|e| e.to_string()).and_then(|l| {
            if l.idempotency_key.is_empty() {
                Err("empty idempotency_key".to_string())
            } else if !valid_ticket_id(&l.ticket) {
                Err("invalid ticket id".to_string())
            } else {
                Ok(l)
            }
        });
        match parsed {
            Ok(l) => {
                if let Some(n) = l.ticket.strip_prefix("file-").and_then(|n| n.parse::<u64>().ok()) {
                    max_n = max_n.max(n);
                }
                // The first line for a key is the ticket; a duplicate (hand edit) changes nothing.
                keys.entry(l.idempotency_key).or_insert(l.ticket);
            }
            Err(e) => {
                report.corrupt_count += 1;
                if report.corrupt.len() < MAX_REPORTED_CORRUPT {
                    report.corrupt.push(CorruptLine { line: i + 1, error: cut(&e, MAX_CORRUPT_ERROR_LEN) });
                }
            }
        }
    }
    report.tickets = keys.len();
    (keys, max_n.saturating_add(1), report)
}

impl Inner {
    fn file(&mut self, req: &TicketRequest) -> Result<Filed, SinkError> {
        let io = |what: &str, e: std::io::Error| SinkError::Transient(format!("ticket file {what}: {e}"));
        if self.unsynced {
            self.file.sync_data().map_err(|e| io("fsync", e))?;
            self.unsynced = false;
        }
        if let Some(t) = self.keys.get(&req.idempotency_key) {
            return Ok(Filed { ticket_id: t.clone(), already: true });
        }
        let ticket = format!("file-{}", self.next);
        let mut line = Vec::new();
        if self.needs_newline {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &LineOut { ticket: &ticket, schema: super::TICKET_SCHEMA, req })
            .map_err(|e| SinkError::Permanent(format!("cannot encode ticket as JSON: {e}")))?;
        line.push(b'\n');
        if self.size.saturating_add(line.len() as u64) > self.limit {
            return Err(SinkError::Permanent(format!(
                "ticket file is full ({} bytes, limit {}); rotate it (move it away) and restart the master",
                self.size, self.limit
            )));
        }
        if let Err(e) = self.file.write_all(&line) {
            // Part of the line may be in the file: start the next one on a fresh line.
            self.needs_newline = true;
            self.size = self.file.metadata().map_or(self.size, |m| m.len());
            return Err(io("write", e));
        }
        self.size += line.len() as u64;
        self.needs_newline = false;
        self.next += 1;
        // The line is in the file: the key is filed whatever fsync says (a retry must not write it again).
        self.keys.insert(req.idempotency_key.clone(), ticket.clone());
        if let Err(e) = self.file.sync_data() {
            self.unsynced = true;
            return Err(io("fsync", e));
        }
        Ok(Filed { ticket_id: ticket, already: false })
    }
}

impl TicketSink for FileSink {
    async fn file(&self, req: &TicketRequest) -> Result<Filed, SinkError> {
        let inner = Arc::clone(&self.inner);
        let req = req.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = inner.lock().map_err(|_| SinkError::Permanent("ticket file lock poisoned".into()))?;
            g.file(&req)
        })
        .await
        .map_err(|e| SinkError::Transient(format!("ticket file task: {e}")))?
    }

    fn name(&self) -> &'static str {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_counts_lines_keys_and_corruption() {
        let content = b"{\"ticket\":\"file-1\",\"idempotency_key\":\"a\"}\n\n  \ngarbage\n\
            {\"ticket\":\"file-7\",\"idempotency_key\":\"b\",\"extra\":1}\n\
            {\"ticket\":\"\",\"idempotency_key\":\"c\"}\n\
            {\"ticket\":\"file-2\",\"idempotency_key\":\"a\"}\n{\"tick";
        let (keys, next, r) = scan(content);
        assert_eq!(keys.get("a").map(String::as_str), Some("file-1"), "first line for a key wins");
        assert_eq!(keys.get("b").map(String::as_str), Some("file-7"));
        assert_eq!(next, 8);
        assert_eq!((r.lines, r.tickets, r.corrupt_count, r.torn_tail), (6, 2, 3, true));
        assert_eq!(r.corrupt.iter().map(|c| c.line).collect::<Vec<_>>(), vec![4, 6, 8]);
        let (_, next, r) = scan(b"");
        assert_eq!((next, r.lines, r.torn_tail), (1, 0, false));
        let many: Vec<u8> = b"x\n".repeat(MAX_REPORTED_CORRUPT + 5);
        let (_, _, r) = scan(&many);
        assert_eq!((r.corrupt_count, r.corrupt.len()), (MAX_REPORTED_CORRUPT + 5, MAX_REPORTED_CORRUPT));
    }
}
