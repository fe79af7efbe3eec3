//! `huatuo predict train|eval` on real Backblaze drive-days (the subsets in predict/testdata/) and
//! `huatuo analyze rules` on a hand-made export with known answers, run as the real binary.
//!
//! The floor asserted here is a property of the trained model on held-out drives and days (not a timing): on
//! the 2013 drive-days (time split), at the baseline rule's own false-positive rate the model catches more of
//! the drive-days that fail within 30 days than the rule does.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_huatuo"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run huatuo");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The figures of the line `horizon 30d: model TPR a% at baseline FPR b% vs baseline TPR c%; model
/// TPR d% at FPR 1%; AUC e`: (a, c, d, e).
fn parse_line(out: &str, horizon: u32) -> (f64, f64, f64, f64) {
    let prefix = format!("horizon {horizon}d: model TPR ");
    let line =
        out.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {prefix} line in {out}"));
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|t| !t.is_empty() && *t != ".")
        .filter_map(|t| t.parse().ok())
        .collect();
    // horizon, model TPR, baseline FPR, baseline TPR, model TPR at 1, "1" of "1%", AUC
    assert_eq!(nums.len(), 7, "{line}: {nums:?}");
    (nums[1], nums[3], nums[4], nums[6])
}

const DAYS_2013: &str = "predict/testdata/drive-days-2013-subset.csv.gz";

#[test]
fn train_then_eval_on_held_out_2013_drive_days_beats_the_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.json");
    let m = model.to_str().expect("utf-8");
    let (code, out, err) = run(&["predict", "train", "--from", DAYS_2013, "--out", m]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("time split at 2013-04-30"), "{out}");
    let bytes = std::fs::read(&model).expect("model written");
    assert!(bytes.len() < predict::MAX_MODEL_BYTES, "{} bytes", bytes.len());
    let parsed = predict::Model::from_json(&bytes).expect("the written model parses");
    assert_eq!((parsed.horizon_days, parsed.min_history_days), (30, 7));
    assert!(
        parsed.trained.to_day < predict::data::parse_day("2013-04-30").expect("day"),
        "trained before the cut"
    );

    // Deterministic: the same command writes the same bytes.
    let again = dir.path().join("again.json");
    let (code, _, err) =
        run(&["predict", "train", "--from", DAYS_2013, "--out", again.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&again).expect("again"), bytes);

    // The written model, evaluated on the held-out drives' days after the cut.
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (code, out, err) = run(&["predict", "eval", "--from", DAYS_2013, "--model", m, "--sha256", &sha]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (model_tpr, baseline_tpr, _, auc) = parse_line(&out, 30);
    assert!(model_tpr > baseline_tpr, "floor: {out}");
    assert!(auc >= 0.80, "{out}");
    assert!(out.contains("scoring: median"), "{out}");

    // Per horizon, trained in memory: both lines, 30d the same as the file's.
    let (code, out2, err) = run(&["predict", "eval", "--from", DAYS_2013]);
    assert_eq!(code, 0, "{err}");
    parse_line(&out2, 7);
    assert_eq!(parse_line(&out2, 30), parse_line(&out, 30));

    // A different sha256, a corrupted file, a model trained past the cut: clear errors.
    let (code, _, err) =
        run(&["predict", "eval", "--from", DAYS_2013, "--model", m, "--sha256", &"0".repeat(64)]);
    assert_ne!(code, 0);
    assert!(err.contains("sha256"), "{err}");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).expect("write");
    let (code, _, err) =
        run(&["predict", "eval", "--from", DAYS_2013, "--model", broken.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(err.contains("does not parse"), "{err}");
    let (code, _, err) = run(&["predict", "eval", "--from", DAYS_2013, "--model", m, "--cut", "2013-04-20"]);
    assert_ne!(code, 0);
    assert!(err.contains("on or after the cut"), "{err}");
}

#[test]
fn snapshots_are_split_by_drive_and_evaluated_raw_only() {
    for f in ["ST8000DM002", "ST8000NM0055"] {
        let path = format!("predict/testdata/{f}-last-day-2019-subset.csv.gz");
        let (code, out, err) = run(&["predict", "eval", "--from", &path, "--horizons", "30"]);
        assert_eq!(code, 0, "{out}\n{err}");
        assert!(out.contains("drive split: 30% of drives"), "{out}");
        assert!(out.contains("excluded (--exclude): raw_1 raw_9 raw_194"), "{out}");
        let (_, _, _, auc) = parse_line(&out, 30);
        // Honest: on snapshots the model only ties or trails the baseline at its FPR (ARCHITECTURE.md says
        // why); what holds is that it ranks failing drives well above chance.
        assert!(auc >= 0.75, "{f}: {out}");
    }
}

/// The full 2019 snapshots, copied unmodified into `predict/testdata/` (1.3 MB; see its README), so the test
/// needs nothing outside the repository; `HUATUO_FIXTURES` may point elsewhere.
fn full_fixtures() -> PathBuf {
    let dir = std::env::var_os("HUATUO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("predict/testdata"));
    assert!(
        dir.join("ST8000DM002-last-day-2019.csv.gz").is_file(),
        "{}: no full 2019 Backblaze snapshots there (predict/testdata, or HUATUO_FIXTURES)",
        dir.display()
    );
    dir
}

/// Seeds the 2019 snapshot figures in ARCHITECTURE.md are reported over (median and range).
const SNAPSHOT_SEEDS: std::ops::RangeInclusive<u32> = 1..=5;

#[test]
fn on_the_full_2019_snapshots_the_model_never_trails_the_baseline_at_its_fpr() {
    // With the date-leaking columns left out, the model sees the baseline's counters plus 184 and 199; what it
    // adds is the failed drives whose only sign is a 184/199 count, so it beats the rule when such a drive is
    // held out and ties otherwise (ARCHITECTURE.md: "2019 snapshots"). Asserted: never below the rule on any
    // seed, and above it on the committed seed 1 for ST8000DM002 and on some seed for each snapshot.
    let dir = full_fixtures();
    for f in ["ST8000DM002", "ST8000NM0055"] {
        let path = dir.join(format!("{f}-last-day-2019.csv.gz"));
        let p = path.to_str().expect("utf-8");
        let mut wins = Vec::new();
        for seed in SNAPSHOT_SEEDS {
            let s = seed.to_string();
            let (code, out, err) = run(&["predict", "eval", "--from", p, "--horizons", "30", "--seed", &s]);
            assert_eq!(code, 0, "{out}\n{err}");
            let (model_tpr, base_tpr, _, _) = parse_line(&out, 30);
            assert!(model_tpr >= base_tpr, "{f} seed {seed}: the model trails the rule: {out}");
            if model_tpr > base_tpr {
                wins.push(seed);
            }
        }
        assert!(!wins.is_empty(), "{f}: no seed in {SNAPSHOT_SEEDS:?} where the model beats the rule");
        if f == "ST8000DM002" {
            assert!(wins.contains(&1), "{f}: seed 1 no longer beats the rule (wins: {wins:?})");
        }
    }
}

/// `held out: N drive-days (P positive, from Q of D drives)`: (N, D).
fn held_out(out: &str) -> (u64, u64) {
    let l = out.lines().find(|l| l.trim_start().starts_with("held out: ")).unwrap_or_else(|| panic!("{out}"));
    let nums: Vec<u64> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
    (nums[0], nums[3])
}

#[test]
fn k_fold_cross_validation_evaluates_every_drive_once_with_pooled_scores() {
    // A snapshot: every drive is held out by one fold, so the pooled evaluation covers all of them.
    let snap = "predict/testdata/ST8000DM002-last-day-2019-subset.csv.gz";
    let (code, out, err) = run(&["predict", "eval", "--from", snap, "--horizons", "30", "--folds", "5"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("split: 5-fold cross-validation by drive (seed 1), pooled scores"), "{out}");
    assert_eq!(out.matches("  fold ").count(), 5, "one model per fold: {out}");
    let drives: u64 = out
        .split(" drive-days, ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("drive count");
    assert_eq!(held_out(&out), (drives, drives), "{out}");
    let (_, _, _, auc) = parse_line(&out, 30);
    assert!(auc >= 0.75, "{out}");
    // A time split keeps its cut (each fold's model trains before it and scores its drives' days from it on;
    // the unit tests check every drive-day lands once): the pooled days are all the days from the cut on, more
    // than the single hold-out's half of the drives.
    let (code, out, err) = run(&["predict", "eval", "--from", DAYS_2013, "--horizons", "30", "--folds", "2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("days before 2013-04-30 and scores its own drives' days from it on"), "{out}");
    let (code, one, err) = run(&["predict", "eval", "--from", DAYS_2013, "--horizons", "30"]);
    assert_eq!(code, 0, "{err}");
    let (folds, single) = (held_out(&out), held_out(&one));
    assert!(
        folds.0 > single.0 * 3 / 2 && folds.1 > single.1 * 3 / 2,
        "folds {folds:?} vs one hold-out {single:?}"
    );
    parse_line(&out, 30);
    // K outside 2..=20, or beside --eval-fraction or --model: refused before any data is read.
    for (args, want) in [
        (&["--folds", "1"][..], "--folds 1: a cross-validation needs 2 to 20 folds"),
        (&["--folds", "21"][..], "--folds 21: a cross-validation needs 2 to 20 folds"),
        (&["--folds", "5", "--eval-fraction", "0.2"][..], "pass one"),
        (&["--folds", "5", "--model", "deploy/models/disk-failure-30d.json"][..], "cannot be used with"),
    ] {
        let mut a = vec!["predict", "eval", "--from", "no-such-file.csv"];
        a.extend_from_slice(args);
        let (code, out, err) = run(&a);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(err.contains(want), "{args:?}: want {want:?} in {err}");
    }
}

#[test]
fn with_ten_folds_the_model_beats_the_baseline_on_both_full_2019_snapshots() {
    // Pooled over 10 folds (every drive evaluated, each by a model trained on the other 90%), the model catches
    // more failed drives than the rule at the rule's FPR on both snapshots: measured on seeds 1..=5 (ARCHITECTURE.md,
    // "2019 snapshots, k-fold"); seed 1 is asserted to keep the test cheap. With 5 folds it does not hold on every
    // seed (ST8000DM002 seeds 1 and 3 trail by 1-2 drives; ARCHITECTURE.md says why), so 5 is not asserted.
    let dir = full_fixtures();
    for f in ["ST8000DM002", "ST8000NM0055"] {
        let path = dir.join(format!("{f}-last-day-2019.csv.gz"));
        let p = path.to_str().expect("utf-8");
        let (code, out, err) = run(&["predict", "eval", "--from", p, "--horizons", "30", "--folds", "10"]);
        assert_eq!(code, 0, "{out}\n{err}");
        let (model_tpr, base_tpr, _, auc) = parse_line(&out, 30);
        assert!(model_tpr > base_tpr, "{f}: the model does not beat the rule over 10 folds: {out}");
        assert!(auc >= 0.80, "{f}: {out}");
    }
}

#[test]
fn bad_drive_day_input_is_a_clear_error_with_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.json");
    let o = out.to_str().expect("utf-8");
    let head = "date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_9_raw\n";
    for (name, body, want) in [
        (
            "nocol.csv",
            "date,serial_number,failure,smart_5_raw\n2013-04-10,S,0,1\n".to_string(),
            ":1: missing required column(s) model",
        ),
        (
            "nan.csv",
            format!("{head}2013-04-10,S,M,1,0,0,5\n2013-04-11,S,M,1,0,NaN,6\n"),
            ":3: smart_5_raw = NaN",
        ),
        ("neg.csv", format!("{head}2013-04-10,S,M,1,0,-4,5\n"), ":2: smart_5_raw = -4"),
        ("huge.csv", format!("{head}2013-04-10,S,M,1,0,1e300,5\n"), "plausible"),
        ("date.csv", format!("{head}2013-02-30,S,M,1,0,0,5\n"), "not YYYY-MM-DD"),
        ("back.csv", format!("{head}2013-04-11,S,M,1,0,0,5\n2013-04-10,S,M,1,0,0,5\n"), ":3: drive S"),
        ("fields.csv", format!("{head}2013-04-10,S,M,1,0\n"), ":2: 5 fields, the header has 7"),
        ("quote.csv", format!("{head}2013-04-10,\"S,M,1,0,0,5\n"), ":2: unterminated quote"),
        ("empty.csv", String::new(), "empty file"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        let (code, stdout, err) =
            run(&["predict", "train", "--from", p.to_str().expect("utf-8"), "--out", o]);
        assert_eq!(code, 1, "{name}: {stdout} {err}");
        assert!(err.contains(want), "{name}: want {want:?} in {err}");
        assert!(!out.exists(), "{name}: nothing written");
    }
    // A Parquet part that is not Parquet is a clear error.
    let export = dir.path().join("export");
    std::fs::create_dir_all(export.join("disk_days/day=2026-12-01")).expect("mkdir");
    std::fs::write(export.join("disk_days/day=2026-12-01/part-0.parquet"), b"PAR1").expect("write");
    let (code, _, err) = run(&["predict", "train", "--from", export.to_str().expect("utf-8"), "--out", o]);
    assert_eq!(code, 1);
    assert!(err.contains("not a readable Parquet part"), "{err}");
}

#[test]
fn analyze_rules_on_a_hand_made_export_gives_the_known_answers() {
    let from = "cli/tests/testdata/export-rules";
    let (code, out, err) = run(&["analyze", "rules", "--from", from, "--min-findings", "5"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("10 findings (1 shadow skipped), 3 transitions: 2 entries into REPAIR on 2 objects"),
        "{out}"
    );
    let row = |name: &str| -> Vec<String> {
        let l = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name}"));
        l.split_whitespace().map(String::from).collect()
    };
    // kind name findings objects preceded precision recall lead
    assert_eq!(row("smart/reallocated-growing")[2..], ["3", "2", "1", "66.7%", "50.0%", "3.0d"]);
    assert_eq!(row("kernel-log/link-flap")[2..], ["5", "5", "0", "0.0%", "0.0%", "-"]);
    assert_eq!(row("smart_197_raw")[2..], ["1", "1", "1", "100.0%", "50.0%", "1.0d"]);
    assert_eq!(row("smart_5_raw")[2..], ["3", "2", "1", "66.7%", "50.0%", "3.0d"]);
    assert!(!out.contains("smart/healthy"), "INFO is not an event: {out}");
    assert!(!out.contains("temperature_c"), "a zero reading is not an event: {out}");
    let cands = out.split("candidates to retire").nth(1).expect("candidates");
    assert!(cands.contains("kernel-log/link-flap: 5 findings") && !cands.contains("smart/"), "{cands}");
    // At the limit: 5 findings are not >= 6.
    let (_, out6, _) = run(&["analyze", "rules", "--from", from, "--min-findings", "6"]);
    assert!(out6.split("candidates to retire").nth(1).expect("c").contains("none"), "{out6}");
    // A 10-day window also catches h2's warning 9 days before its REPAIR.
    let (_, out10, _) = run(&["analyze", "rules", "--from", from, "--days", "10", "--json"]);
    let v: serde_json::Value = out10
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .find(|v| v["name"] == "smart/reallocated-growing")
        .expect("rule");
    assert_eq!((v["repairs_preceded"].as_u64(), v["recall"].as_f64()), (Some(2), Some(1.0)));
    // Bad input.
    let (code, _, err) = run(&["analyze", "rules", "--from", from, "--days", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--days 0"), "{err}");
    let (code, _, err) = run(&["analyze", "rules", "--from", "predict/testdata"]);
    assert_ne!(code, 0);
    assert!(err.contains("no findings/ directory"), "{err}");
}

#[test]
fn the_committed_model_meets_the_floor_on_held_out_drive_days() {
    // deploy/models/disk-failure-30d.json was trained on the full 2013 fixture's training side (seed 1, cut
    // 2013-04-30); the subset's evaluation side is the same drives' days after the cut, never trained on.
    let m = "deploy/models/disk-failure-30d.json";
    let bytes = std::fs::read(repo().join(m)).expect("committed model");
    assert!(bytes.len() < predict::MAX_MODEL_BYTES);
    let model = predict::Model::from_json(&bytes).expect("parses");
    assert_eq!(model.horizon_days, 30);
    let (code, out, err) = run(&["predict", "eval", "--from", DAYS_2013, "--model", m]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (model_tpr, baseline_tpr, _, auc) = parse_line(&out, 30);
    assert!(model_tpr > baseline_tpr && auc >= 0.85, "{out}");
}

#[test]
fn an_export_directory_is_read_through_its_disk_days_partitions() {
    // The shape `huatuo export --format csv` writes (deploy/analytics/SCHEMA.md): one partition per day,
    // Backblaze's columns plus `object`. 300 disks over 20 days; every tenth one's reallocated sectors grow
    // for 6 days before it enters REPAIR (failure=1) on a day from 6 to 19, and it is not seen again.
    let dir = tempfile::tempdir().expect("tempdir");
    for d in 0..20u32 {
        let day = format!("2026-11-{:02}", d + 1);
        let part = dir.path().join(format!("disk_days/day={day}"));
        std::fs::create_dir_all(&part).expect("mkdir");
        let mut csv = String::from(
            "date,serial_number,model,capacity_bytes,failure,object,smart_5_raw,smart_9_raw,smart_187_raw\n",
        );
        for s in 0..300u32 {
            let failing = s % 10 == 0;
            let fails_on = 6 + (s / 10) % 14;
            if failing && d > fails_on {
                continue;
            }
            let r5 = if failing && d + 6 >= fails_on { (d + 7 - fails_on) * 4 } else { 0 };
            let failure = u32::from(failing && d == fails_on);
            csv += &format!(
                "{day},SN{s},\"Model, X\",4000787030016,{failure},disk/h{s}/sda,{r5},{},0\n",
                1000 + s + d * 24
            );
        }
        std::fs::write(part.join("part-0.csv"), csv).expect("write");
    }
    let from = dir.path().to_str().expect("utf-8");
    let out_model = dir.path().join("m.json");
    let (code, out, err) = run(&[
        "predict",
        "train",
        "--from",
        from,
        "--out",
        out_model.to_str().expect("utf-8"),
        "--horizon",
        "7",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("drive-days, 300 drives (30 failed), 2026-11-01..2026-11-20"), "{out}");
    let model = predict::Model::from_json(&std::fs::read(&out_model).expect("model")).expect("parses");
    assert_eq!(model.horizon_days, 7);
    let (code, out, err) = run(&["predict", "eval", "--from", from, "--horizons", "7"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (model_tpr, _, _, auc) = parse_line(&out, 7);
    assert!(model_tpr > 50.0 && auc > 0.9, "{out}");
}
