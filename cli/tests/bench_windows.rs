//! `huatuo bench windows` at a tiny scale: both command versions run, each removes exactly the disks it was
//! asked to (the bench checks the replicated count), and bad arguments are refused before anything runs. No
//! timing assertion: the figures are the benchmark's output, not a test's.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(["bench", "windows"])
        .args(args)
        .arg("--dir")
        .arg(data.path())
        .output()
        .expect("run huatuo bench windows");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn bench_windows_runs_lists_and_rows_and_prints_both() {
    let (ok, stdout, stderr) = bench(&["--removals", "60", "--block", "25", "--after", "10"]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for line in [
        "machine now: ",
        "bench windows: 60 removals (one per entry, each its own fsync'd commit), 10 findings after; blocks of 25",
        "version 10 (lists): ms per removal entry, median per block: ",
        "version 11 (rows): ms per removal entry, median per block: ",
        "version 11 (rows): ms per finding that removes nothing after the burst, median: ",
        "last block: lists ",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // Three blocks (25, 25, 10) per version.
    let blocks =
        stdout.lines().find(|l| l.starts_with("version 11 (rows): ms per removal")).expect("rows line");
    assert_eq!(blocks.rsplit(": ").next().expect("figures").split(' ').count(), 3, "{blocks}");
}

#[test]
fn bench_windows_refuses_bad_arguments_before_running() {
    for args in [&["--removals", "0"][..], &["--block", "0"], &["--version", "9"], &["--removals", "100001"]]
    {
        let (ok, stdout, stderr) = bench(args);
        assert!(!ok && !stdout.contains("machine now"), "{args:?} ran:\n{stdout}\n{stderr}");
        assert!(stderr.contains("--removals") || stderr.contains("--version"), "{args:?}: {stderr}");
    }
}
