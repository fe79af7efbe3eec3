//! The TEST benchmark: sequential write and read (1 MiB blocks) and random 4 KiB read and write with
//! O_DIRECT on a file in the staging mount, each phase bounded by time, then compared with thresholds.
//! Buffers are aligned in safe Rust (a larger `Vec` and an aligned window into it); offsets come from a
//! seeded xorshift so runs are reproducible. Measurement uses the monotonic clock; decisions use only the
//! figures and the thresholds.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::config::Thresholds;
use crate::worker::StepError;

/// O_DIRECT needs buffers, offsets and lengths aligned to the logical block size; 4 KiB covers 512e
/// and 4Kn drives.
pub const ALIGN: usize = 4096;
/// Sequential block size: large enough to measure throughput, not per-request overhead.
pub const SEQ_BLOCK: usize = 1024 * 1024;
/// Random I/O block size (the usual IOPS figure).
pub const RAND_BLOCK: usize = 4096;
/// Most latency samples kept per phase (4 MiB of u32): beyond that the percentile does not move.
pub const MAX_SAMPLES: usize = 1 << 20;
/// Fewest random operations for a meaningful figure; a phase that manages fewer fails the test.
pub const MIN_RAND_OPS: u64 = 16;
/// Seed of the random offsets (fixed: the same disk gets the same access pattern every time).
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The benchmark's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub seq_write_mbps: f64,
    pub seq_read_mbps: f64,
    pub rand_read_iops: f64,
    pub rand_write_iops: f64,
    pub rand_read_p99_ms: f64,
    pub rand_write_p99_ms: f64,
    pub bytes_written: u64,
    pub rand_read_ops: u64,
    pub rand_write_ops: u64,
}

impl Figures {
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        [
            ("seq_write_mbps", r(self.seq_write_mbps)),
            ("seq_read_mbps", r(self.seq_read_mbps)),
            ("rand_read_iops", r(self.rand_read_iops)),
            ("rand_write_iops", r(self.rand_write_iops)),
            ("rand_read_p99_ms", r(self.rand_read_p99_ms)),
            ("rand_write_p99_ms", r(self.rand_write_p99_ms)),
            ("bytes_written", self.bytes_written as f64),
            ("rand_read_ops", self.rand_read_ops as f64),
            ("rand_write_ops", self.rand_write_ops as f64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Compare figures with thresholds; returns the violations (empty = pass).
pub fn judge(f: &Figures, t: &Thresholds) -> Vec<String> {
    let mut bad = Vec::new();
    let mut floor = |name: &str, got: f64, min: Option<f64>| {
        if let Some(min) = min
            && got < min
        {
            bad.push(format!("{name} {got:.1} < {min}"));
        }
    };
    floor("seq_read_mbps", f.seq_read_mbps, t.min_seq_read_mbps);
    floor("seq_write_mbps", f.seq_write_mbps, t.min_seq_write_mbps);
    floor("rand_read_iops", f.rand_read_iops, t.min_rand_read_iops);
    floor("rand_write_iops", f.rand_write_iops, t.min_rand_write_iops);
    let mut ceil = |name: &str, got: f64, max: Option<f64>| {
        if let Some(max) = max
            && got > max
        {
            bad.push(format!("{name} {got:.2} > {max}"));
        }
    };
    ceil("rand_read_p99_ms", f.rand_read_p99_ms, t.max_rand_read_p99_ms);
    ceil("rand_write_p99_ms", f.rand_write_p99_ms, t.max_rand_write_p99_ms);
    bad
}

/// A heap buffer whose usable window starts on an [`ALIGN`] boundary.
struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, fill: u8) -> Self {
        let raw = vec![fill; len + ALIGN];
        let off = raw.as_ptr().align_offset(ALIGN);
        // align_offset may give up (usize::MAX) in theory; fall back to a window that fails loudly in
        // the O_DIRECT call (EINVAL) rather than reading out of bounds.
        let off = if off < ALIGN { off } else { 0 };
        AlignedBuf { raw, off, len }
    }
    fn slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }
    fn slice_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// xorshift64*: deterministic offsets without a global RNG.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn p99_ms(samples: &mut [u32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let idx = ((samples.len() as f64 * 0.99).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[idx] as f64 / 1000.0
}

fn open_direct(path: &Path, create: bool) -> Result<File, StepError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).custom_flags(libc::O_DIRECT);
    if create {
        o.create(true).truncate(true);
    }
    o.open(path).map_err(|e| {
        StepError::Failed({
            if e.raw_os_error() == Some(libc::EINVAL) {
                format!("{}: the filesystem does not support O_DIRECT ({e})", path.display())
            } else {
                format!("{}: {e}", path.display())
            }
        })
    })
}

fn io_err(what: &str, e: std::io::Error) -> StepError {
    StepError::Failed(format!("{what}: {e}"))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1_000_000.0 / d.as_secs_f64().max(1e-9)
}

/// Run the four phases on `path` (created, removed at the end), `total` time split evenly, the file at
/// most `file_bytes`. `deadline` bounds everything: phases stop early when it comes.
pub fn run(path: &Path, file_bytes: u64, total: Duration, deadline: Instant) -> Result<Figures, StepError> {
    let res = run_inner(path, file_bytes, total, deadline);
    let _ = std::fs::remove_file(path);
    res
}

fn run_inner(path: &Path, file_bytes: u64, total: Duration, deadline: Instant) -> Result<Figures, StepError> {
    let phase = total / 4;
    let file_bytes = file_bytes - file_bytes % SEQ_BLOCK as u64;
    if file_bytes < SEQ_BLOCK as u64 {
        return Err(StepError::Failed("benchmark file smaller than one block".into()));
    }
    let f = open_direct(path, true)?;
    let mut fig = Figures::default();
    let stop = |start: Instant| start.elapsed() >= phase || Instant::now() >= deadline;

    // Sequential write: until the file is full or the phase time is up.
    let buf = AlignedBuf::new(SEQ_BLOCK, 0x5a);
    let start = Instant::now();
    let mut written = 0u64;
    while written < file_bytes && !stop(start) {
        f.write_all_at(buf.slice(), written).map_err(|e| io_err("sequential write", e))?;
        written += SEQ_BLOCK as u64;
    }
    f.sync_all().map_err(|e| io_err("fsync", e))?;
    let took = start.elapsed();
    if written == 0 {
        return Err(StepError::Failed("sequential write made no progress before the deadline".into()));
    }
    fig.bytes_written = written;
    fig.seq_write_mbps = mbps(written, took);

    // Sequential read over what was written, wrapping, for the phase time.
    let mut rbuf = AlignedBuf::new(SEQ_BLOCK, 0);
    let start = Instant::now();
    let mut read = 0u64;
    loop {
        f.read_exact_at(rbuf.slice_mut(), read % written).map_err(|e| io_err("sequential read", e))?;
        read += SEQ_BLOCK as u64;
        if stop(start) {
            break;
        }
    }
    fig.seq_read_mbps = mbps(read, start.elapsed());

    // Random 4 KiB reads and writes at aligned offsets inside the written region.
    let blocks = written / RAND_BLOCK as u64;
    let mut rng = Rng(SEED);
    let mut small = AlignedBuf::new(RAND_BLOCK, 0xa5);
    for write in [false, true] {
        let mut lat: Vec<u32> = Vec::new();
        let start = Instant::now();
        let mut ops = 0u64;
        loop {
            let off = (rng.next() % blocks) * RAND_BLOCK as u64;
            let t = Instant::now();
            if write {
                f.write_all_at(small.slice(), off).map_err(|e| io_err("random write", e))?;
            } else {
                f.read_exact_at(small.slice_mut(), off).map_err(|e| io_err("random read", e))?;
            }
            if lat.len() < MAX_SAMPLES {
                lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            ops += 1;
            if stop(start) {
                break;
            }
        }
        if write {
            f.sync_all().map_err(|e| io_err("fsync", e))?;
        }
        let took = start.elapsed();
        if ops < MIN_RAND_OPS {
            return Err(StepError::Failed(format!(
                "random {} managed only {ops} operations (< {MIN_RAND_OPS}) before the deadline",
                if write { "write" } else { "read" }
            )));
        }
        let iops = ops as f64 / took.as_secs_f64().max(1e-9);
        if write {
            fig.rand_write_iops = iops;
            fig.rand_write_p99_ms = p99_ms(&mut lat);
            fig.rand_write_ops = ops;
        } else {
            fig.rand_read_iops = iops;
            fig.rand_read_p99_ms = p99_ms(&mut lat);
            fig.rand_read_ops = ops;
        }
    }
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_floors_and_ceilings() {
        let f = Figures {
            seq_read_mbps: 100.0,
            seq_write_mbps: 80.0,
            rand_read_iops: 200.0,
            rand_write_iops: 150.0,
            rand_read_p99_ms: 12.0,
            rand_write_p99_ms: 30.0,
            ..Default::default()
        };
        assert!(judge(&f, &Thresholds::default()).is_empty(), "no thresholds, no violations");
        let t = Thresholds {
            min_seq_read_mbps: Some(100.0),
            min_seq_write_mbps: Some(81.0),
            max_rand_read_p99_ms: Some(12.0),
            max_rand_write_p99_ms: Some(29.9),
            ..Default::default()
        };
        let bad = judge(&f, &t);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("seq_write_mbps") && bad[1].starts_with("rand_write_p99_ms"));
    }

    #[test]
    fn aligned_buffers_and_percentiles() {
        for len in [RAND_BLOCK, SEQ_BLOCK] {
            let b = AlignedBuf::new(len, 1);
            assert_eq!(b.slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.slice().len(), len);
        }
        let mut s: Vec<u32> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(p99_ms(&mut s), 99.0);
        assert_eq!(p99_ms(&mut []), 0.0);
        let mut r = Rng(SEED);
        let a = r.next();
        assert_ne!(a, r.next());
        assert_eq!(Rng(SEED).next(), a, "seeded: reproducible");
    }

    #[test]
    fn a_passed_deadline_is_a_clear_failure() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bench");
        let r = run(&p, 4 * 1024 * 1024, Duration::from_secs(1), Instant::now());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("no progress") || e.contains("O_DIRECT"), "{e}");
        assert!(
            run(&p, 1000, Duration::from_secs(1), Instant::now())
                .unwrap_err()
                .to_string()
                .contains("smaller than one block")
        );
        assert!(!p.exists());
    }

    #[test]
    fn o_direct_on_tmpfs_is_a_clear_error_or_runs() {
        // A file system without O_DIRECT (tmpfs on older kernels) is a clear error; so is a disk too busy to
        // give a phase its minimum of operations in the time (CI runs hundreds of tests beside this one: one
        // run saw 3 random reads in a 20 ms phase). Either way the result is clear, never a panic.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bench");
        let deadline = Instant::now() + Duration::from_secs(5);
        match run(&p, 4 * 1024 * 1024, Duration::from_millis(200), deadline) {
            Ok(f) => assert!(f.seq_write_mbps > 0.0 && f.rand_read_ops >= MIN_RAND_OPS, "{f:?}"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("O_DIRECT") || e.contains(&format!("(< {MIN_RAND_OPS}) before the deadline")),
                    "{e}"
                )
            }
        }
        assert!(!p.exists(), "benchmark file removed");
    }
}
