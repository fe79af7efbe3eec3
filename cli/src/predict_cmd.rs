//! `huatuo predict train|eval` (issue 20): the disk-failure predictor, offline. Reads drive-days (Backblaze
//! Drive Stats CSV or `.csv.gz`, or an export directory's `disk_days` table), trains the logistic model of the
//! `predict` crate on the training side of a split, and evaluates it on held-out drives and days beside the
//! baseline rule. The maths lives in `predict` (pure); this module does the files and the printing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use predict::data::{
    CsvHeader, Dataset, FOLDS, HeldOut, Split, check_drive_day_columns, drive_day_with, format_day,
    parse_day, smart_ids,
};
use predict::eval::{HorizonReport, evaluate, evaluate_pooled};
use predict::train::{FoldModel, TrainConfig, TrainSummary, cross_validate, train};
use predict::{MAX_MODEL_BYTES, Model};
use sha2::{Digest, Sha256};

#[derive(Subcommand, Debug)]
pub enum PredictCmd {
    /// Train a model on the training side of the split and write it (the catalog's `model` artifact).
    Train(TrainArgs),
    /// Evaluate on held-out drives and days, per horizon, beside the baseline rule (any of smart
    /// 5/187/188/197/198 raw > 0); prints the scoring time per disk and the model's size.
    Eval(EvalArgs),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SplitKind {
    /// `time` for histories, `drive` for snapshots (every drive has one row).
    Auto,
    /// Train on days before the cut, evaluate on days from it on; each drive on one side only.
    Time,
    /// Hold out a seeded fraction of drives (snapshots).
    Drive,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Drive-day CSV files (`.csv` or `.csv.gz`, Backblaze's columns) or `huatuo export` directories (their
    /// `disk_days/**/part-*.csv`). A drive's rows must come in date order across the files.
    #[arg(long, required = true, num_args = 1..)]
    from: Vec<PathBuf>,
    /// How the data is split into training and evaluation.
    #[arg(long, value_enum, default_value = "auto")]
    split: SplitKind,
    /// First evaluated day of a time split (YYYY-MM-DD); default: the middle of the data's days.
    #[arg(long)]
    cut: Option<String>,
    /// Fraction of drives held out for evaluation (default 0.5 for a time split, 0.3 for a drive split).
    #[arg(long)]
    eval_fraction: Option<f64>,
    /// Seeds the drive split and the negative subsampling: the same seed gives the same model and figures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Drive-days with a shorter history get no prediction (default 7 for histories, 1 for snapshots).
    #[arg(long)]
    min_history_days: Option<u32>,
    /// L2 penalty on the standardised weights.
    #[arg(long, default_value_t = 1e-2)]
    l2: f64,
    /// The model's threshold is its score at this false-positive rate of training drive-days.
    #[arg(long, default_value_t = 0.01)]
    target_fpr: f64,
    /// Leave out the disk-model one-hot features.
    #[arg(long)]
    no_model_features: bool,
    /// Let error counters' features (smart 5/187/188/197/198/199) take negative weights.
    #[arg(long)]
    no_monotone: bool,
    /// Leave out these features (names as printed: raw_9,delta_5_7d). Default for a snapshot:
    /// raw_1,raw_9,raw_194 — a snapshot takes each failed drive on its failure day but each healthy one on the
    /// last day of the period, so power-on hours (9), the seasonal temperature (194) and Seagate's rolling
    /// read-error count (1) tell the snapshot's date, not the drive's health. `none` keeps everything.
    #[arg(long, value_delimiter = ',')]
    exclude: Option<Vec<String>>,
}

/// Features a snapshot's sampling confounds (see `--exclude`).
const SNAPSHOT_EXCLUDE: [&str; 3] = ["raw_1", "raw_9", "raw_194"];

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Where to write the model (JSON).
    #[arg(long)]
    out: PathBuf,
    /// Predict failure within this many days.
    #[arg(long, default_value_t = 30)]
    horizon: u32,
    /// The model's name.
    #[arg(long, default_value = "disk-failure")]
    name: String,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate this model file (at its own horizon) instead of training one per horizon on the training side.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The model file's expected sha256 (hex); a different file is refused.
    #[arg(long, requires = "model")]
    sha256: Option<String>,
    /// Horizons to train and evaluate, in days (without --model).
    #[arg(long, value_delimiter = ',', default_value = "7,30")]
    horizons: Vec<u32>,
    /// K-fold cross-validation by drive (K in 2..=20) instead of one hold-out: each drive is in one fold (the
    /// seeded hash of its serial), each fold's model is trained on the other folds exactly as `train` trains,
    /// and the held-out scores of all folds are pooled and evaluated once, so every drive is evaluated. With a
    /// time split, each fold's model trains on its drives' days before the cut and scores its fold's days from
    /// the cut on. Not with --model (a given model cannot be refitted) or --eval-fraction (the folds decide).
    #[arg(long, conflicts_with = "model")]
    folds: Option<u32>,
}

pub fn run(c: PredictCmd) -> anyhow::Result<ExitCode> {
    match c {
        PredictCmd::Train(a) => run_train(a),
        PredictCmd::Eval(a) => run_eval(a),
    }
}

/// A file of an export table or a drive-day CSV, opened as text lines whatever its compression.
fn open_lines(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).with_context(|| format!("read {}", path.display()))?;
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(f)))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

/// Longest file list one table may have (a year of daily partitions is 366).
const MAX_TABLE_FILES: usize = 100_000;
/// Deepest directory nesting walked under a table (`day=.../part-0.csv` is 1).
const MAX_TABLE_DEPTH: usize = 4;

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if depth > MAX_TABLE_DEPTH {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("read directory {}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            walk(&p, depth + 1, out)?;
        } else if name.starts_with("part-")
            && (name.ends_with(".csv") || name.ends_with(".csv.gz") || name.ends_with(".parquet"))
        {
            out.push(p);
            if out.len() > MAX_TABLE_FILES {
                bail!("more than {MAX_TABLE_FILES} files under {}", dir.display());
            }
        }
    }
    Ok(())
}

/// The CSV and Parquet parts of one table of an export directory, in path order (day partitions sort by date).
pub(crate) fn table_files(export_dir: &Path, table: &str) -> anyhow::Result<Vec<PathBuf>> {
    let dir = export_dir.join(table);
    if !dir.is_dir() {
        bail!("{} has no {table}/ directory: is it a `huatuo export` directory?", export_dir.display());
    }
    let mut files = Vec::new();
    walk(&dir, 0, &mut files)?;
    if files.is_empty() {
        bail!("{} has no part-*.csv or part-*.parquet files", dir.display());
    }
    files.sort();
    Ok(files)
}

/// Read every row of a CSV file through `each(header, row)`, with errors naming the file and line.
pub(crate) fn for_each_row(
    path: &Path,
    check: impl Fn(&CsvHeader) -> Result<(), String>,
    mut each: impl FnMut(&predict::data::CsvRow<'_>) -> Result<(), String>,
) -> anyhow::Result<u64> {
    if path.extension().is_some_and(|e| e == "parquet") {
        let (columns, rows) = crate::export_cmd::table::read_parquet_table(path)
            .with_context(|| format!("{}: not a readable Parquet part", path.display()))?;
        let h =
            CsvHeader::parse(&columns.join(",")).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        check(&h).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (i, fields) in rows.iter().enumerate() {
            let at = |e: String| anyhow::anyhow!("{} row {}: {e}", path.display(), i + 1);
            each(&h.row(fields).map_err(at)?).map_err(at)?;
        }
        return Ok(rows.len() as u64);
    }
    let mut lines = open_lines(path)?;
    let mut line = String::new();
    let mut no = 0u64;
    let mut header: Option<CsvHeader> = None;
    let mut fields = Vec::new();
    let mut rows = 0;
    loop {
        line.clear();
        let n = lines.read_line(&mut line).with_context(|| format!("{}:{}: read", path.display(), no + 1))?;
        if n == 0 {
            break;
        }
        no += 1;
        let at = |e: String| anyhow::anyhow!("{}:{no}: {e}", path.display());
        match &header {
            None => {
                let h = CsvHeader::parse(&line).map_err(at)?;
                check(&h).map_err(at)?;
                header = Some(h);
            }
            Some(h) => {
                if line.trim().is_empty() {
                    continue;
                }
                predict::data::split_csv_line(&line, &mut fields).map_err(at)?;
                let row = h.row(&fields).map_err(at)?;
                each(&row).map_err(at)?;
                rows += 1;
            }
        }
    }
    if header.is_none() {
        bail!("{}: empty file (no header)", path.display());
    }
    Ok(rows)
}

/// Load drive-days from the given files and export directories.
fn load(from: &[PathBuf]) -> anyhow::Result<(Dataset, String)> {
    let mut files = Vec::new();
    for p in from {
        if p.is_dir() {
            files.extend(table_files(p, "disk_days")?);
        } else {
            files.push(p.clone());
        }
    }
    let mut ds = Dataset::new();
    for f in &files {
        // The file's smart_N_raw ids, set by the header check and read by every row.
        let ids = std::cell::RefCell::new(Vec::new());
        for_each_row(
            f,
            |h| {
                check_drive_day_columns(h.columns())?;
                *ids.borrow_mut() = smart_ids(h.columns());
                Ok(())
            },
            |row| {
                let d = drive_day_with(row, &ids.borrow())?;
                ds.push(d)
            },
        )?;
    }
    if ds.rows.is_empty() {
        bail!(
            "no drive-days in {}",
            from.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let names: Vec<String> = from
        .iter()
        .map(|p| p.file_name().map_or(p.display().to_string(), |n| n.to_string_lossy().into()))
        .collect();
    Ok((ds, names.join(" ")))
}

fn split_of(a: &DataArgs, ds: &Dataset) -> anyhow::Result<Split> {
    let snapshot = ds.is_snapshot();
    let kind = match a.split {
        SplitKind::Auto if snapshot => SplitKind::Drive,
        SplitKind::Auto => SplitKind::Time,
        k => k,
    };
    let frac = a.eval_fraction.unwrap_or(if kind == SplitKind::Drive { 0.3 } else { 0.5 });
    if !(frac > 0.0 && frac < 1.0) {
        bail!("--eval-fraction {frac} must be strictly between 0 and 1");
    }
    Ok(match kind {
        SplitKind::Drive => Split::Drive { held_out: HeldOut::Fraction(frac), seed: a.seed },
        _ => {
            let (lo, hi) = ds.day_range().context("no days")?;
            let cut = match &a.cut {
                Some(c) => parse_day(c).map_err(|e| anyhow::anyhow!("--cut: {e}"))?,
                None => lo + (hi - lo).div_ceil(2),
            };
            if cut <= lo || cut > hi {
                bail!(
                    "--cut {} is outside the data's days {}..{}",
                    format_day(cut),
                    format_day(lo),
                    format_day(hi)
                );
            }
            Split::Time { cut_day: cut, held_out: HeldOut::Fraction(frac), seed: a.seed }
        }
    })
}

fn config(a: &DataArgs, ds: &Dataset, horizon: u32, name: &str, source: &str) -> anyhow::Result<TrainConfig> {
    if horizon == 0 || horizon > 365 {
        bail!("horizon of {horizon} days; 1..=365 wanted");
    }
    let known: Vec<String> = ds.candidates.iter().map(|f| f.name()).collect();
    for x in a.exclude.iter().flatten() {
        if x != "none" && !known.contains(x) {
            bail!("--exclude {x}: no such feature; the features are {}", known.join(","));
        }
    }
    Ok(TrainConfig {
        name: name.to_string(),
        horizon_days: horizon,
        min_history_days: a.min_history_days.unwrap_or(if ds.is_snapshot() { 1 } else { 7 }),
        l2: a.l2,
        seed: a.seed,
        target_fpr: a.target_fpr,
        model_features: !a.no_model_features,
        monotone: !a.no_monotone,
        max_train_rows: predict::train::MAX_TRAIN_ROWS,
        source: source.to_string(),
        exclude: match &a.exclude {
            Some(v) if v.iter().any(|x| x == "none") => Vec::new(),
            Some(v) => v.clone(),
            None if ds.is_snapshot() => SNAPSHOT_EXCLUDE.iter().map(|s| s.to_string()).collect(),
            None => Vec::new(),
        },
    })
}

fn describe_data(ds: &Dataset, source: &str) -> String {
    let failed = ds.drives.iter().filter(|d| !d.failures.is_empty()).count();
    let (lo, hi) = ds.day_range().unwrap_or((0, 0));
    format!(
        "data: {source}: {} drive-days, {} drives ({failed} failed), {}..{}{}",
        ds.rows.len(),
        ds.drives.len(),
        format_day(lo),
        format_day(hi),
        if ds.is_snapshot() { " (snapshot: one row per drive, label = failure that day)" } else { "" }
    )
}

fn print_train(s: &TrainSummary, m: &Model, cfg: &TrainConfig) {
    println!(
        "  trained on {} drive-days ({} positive, from {} of {} drives; negatives kept {:.1}%), {} features, {} Newton \
         steps, threshold p={:.4}",
        s.rows,
        s.positives,
        s.positive_drives,
        s.drives,
        s.negative_rate * 100.0,
        m.features.len(),
        s.newton_steps,
        m.threshold
    );
    if !cfg.exclude.is_empty() {
        println!("  excluded (--exclude): {}", cfg.exclude.join(" "));
    }
    if !s.negative.is_empty() {
        println!("  dropped for a negative weight on an error counter: {}", s.negative.join(" "));
    }
    if !s.dropped.is_empty() {
        println!("  dropped (constant or absent in training): {}", s.dropped.join(" "));
    }
    let mut w: Vec<(String, f64)> =
        m.features.iter().map(|f| f.name()).zip(m.weights.iter().copied()).collect();
    w.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    let top: Vec<String> = w.iter().take(6).map(|(n, x)| format!("{n} {x:+.2}")).collect();
    println!("  largest weights (standardised): {}", top.join(", "));
}

fn run_train(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let (ds, source) = load(&a.data.from)?;
    println!("{}", describe_data(&ds, &source));
    let split = split_of(&a.data, &ds)?;
    println!("split: {}", split.describe());
    let cfg = config(&a.data, &ds, a.horizon, &a.name, &source)?;
    let (model, summary) = train(&ds, &split, &cfg).map_err(|e| anyhow::anyhow!("train: {e}"))?;
    print_train(&summary, &model, &cfg);
    let json = model.to_json() + "\n";
    if json.len() > MAX_MODEL_BYTES {
        bail!("the model is {} bytes, over the {MAX_MODEL_BYTES}-byte limit", json.len());
    }
    Model::from_json(json.as_bytes())
        .map_err(|e| anyhow::anyhow!("the trained model does not read back: {e}"))?;
    std::fs::write(&a.out, &json).with_context(|| format!("write {}", a.out.display()))?;
    println!("wrote {} ({} bytes, sha256 {})", a.out.display(), json.len(), hex_sha256(json.as_bytes()));
    Ok(ExitCode::SUCCESS)
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// Read and check a model file: size, sha256 when given, and everything [`Model::from_json`] checks.
fn read_model(path: &Path, sha256: Option<&str>) -> anyhow::Result<(Model, usize)> {
    let meta = std::fs::metadata(path).with_context(|| format!("model {}", path.display()))?;
    if meta.len() > MAX_MODEL_BYTES as u64 {
        bail!("model {} is {} bytes, over the {MAX_MODEL_BYTES}-byte limit", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if let Some(want) = sha256 {
        let have = hex_sha256(&bytes);
        if !have.eq_ignore_ascii_case(want.trim()) {
            bail!("model {}: sha256 is {have}, not the expected {want}", path.display());
        }
    }
    let m = Model::from_json(&bytes).map_err(|e| anyhow::anyhow!("model {}: {e}", path.display()))?;
    Ok((m, bytes.len()))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `threshold` says which threshold "model at its threshold" is (one model's p, or each fold's).
fn print_report(r: &HorizonReport, min_history_days: u32, threshold: &str) {
    println!(
        "  held out: {} drive-days ({} positive, from {} of {} drives); {} without a prediction (history < {} days)",
        r.rows, r.positives, r.positive_drives, r.drives, r.no_prediction, min_history_days
    );
    println!(
        "  baseline (any of smart 5/187/188/197/198 raw > 0): TPR {} FPR {} precision {}",
        pct(r.baseline.tpr()),
        pct(r.baseline.fpr()),
        pct(r.baseline.precision())
    );
    println!(
        "  model at {threshold}: precision {} recall {} FPR {}",
        pct(r.at_threshold.precision()),
        pct(r.at_threshold.tpr()),
        pct(r.at_threshold.fpr())
    );
    if let Some(o) = r.model_at_01pct {
        println!("  model TPR {} at FPR 0.1% (actual FPR {:.3}%)", pct(o.tpr), o.fpr * 100.0);
    }
    println!(
        "  drives failing within {}d caught on a positive day: model at FPR 1% {} of {}, baseline {} of {}",
        r.horizon_days, r.drives_caught_1pct, r.positive_drives, r.drives_caught_baseline, r.positive_drives
    );
}

/// Times of [`Model::score`] per held-out disk's history (the agent's call), in ns, and how many histories
/// were too short to score.
fn scoring_times(model: &Model, ds: &Dataset, split: &Split) -> (Vec<u64>, usize) {
    let mut times = Vec::new();
    let mut none = 0;
    for (id, h) in ds.histories.iter().enumerate() {
        if !split.eval_drive(&ds.drives[id].serial) {
            continue;
        }
        let t = Instant::now();
        let r = std::hint::black_box(model.score(std::hint::black_box(h)));
        let ns = t.elapsed().as_nanos() as u64;
        match r {
            Ok(_) => times.push(ns),
            Err(_) => none += 1,
        }
    }
    (times, none)
}

/// Print the median scoring time over `times` and the model file's size.
fn print_scoring(mut times: Vec<u64>, none: usize, size: usize) {
    times.sort_unstable();
    let ns = times.get(times.len() / 2).copied().unwrap_or(0);
    println!(
        "  scoring: median {ns} ns per disk over {} held-out disk histories ({none} too short); model file {size} \
         bytes (floors: < 1 ms, < {MAX_MODEL_BYTES} bytes)",
        times.len()
    );
}

/// `--folds K` checked before any data is read, so a wrong K fails at once.
fn check_folds(a: &EvalArgs) -> anyhow::Result<()> {
    let Some(k) = a.folds else { return Ok(()) };
    if !FOLDS.contains(&k) {
        bail!("--folds {k}: a cross-validation needs {} to {} folds", FOLDS.start(), FOLDS.end());
    }
    if a.data.eval_fraction.is_some() {
        bail!(
            "--folds and --eval-fraction both say which drives are held out: pass one (each fold holds out 1/K)"
        );
    }
    Ok(())
}

fn run_eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    check_folds(&a)?;
    let loaded_model = match &a.model {
        Some(p) => Some(read_model(p, a.sha256.as_deref())?),
        None => None,
    };
    let (ds, source) = load(&a.data.from)?;
    println!("{}", describe_data(&ds, &source));
    let split = split_of(&a.data, &ds)?;
    if let Some(k) = a.folds {
        return run_eval_folds(&a, &ds, &source, &split, k);
    }
    println!("split: {}", split.describe());
    let mut models: Vec<(Model, usize)> = Vec::new();
    match loaded_model {
        Some((m, size)) => {
            if let Split::Time { cut_day, .. } = split
                && m.trained.to_day >= cut_day
            {
                bail!(
                    "the model was trained on days up to {}, on or after the cut {}: evaluating it here would score \
                     days it has seen; pass the --cut and --seed it was trained with",
                    format_day(m.trained.to_day),
                    format_day(cut_day)
                );
            }
            println!("model: {} (trained on {}; {} bytes)", m.name, m.trained.source, size);
            models.push((m, size));
        }
        None => {
            if a.horizons.is_empty() {
                bail!("--horizons is empty");
            }
            for &h in &a.horizons {
                let cfg = config(&a.data, &ds, h, "disk-failure", &source)?;
                let (m, s) =
                    train(&ds, &split, &cfg).map_err(|e| anyhow::anyhow!("train horizon {h}d: {e}"))?;
                println!("horizon {h}d model:");
                print_train(&s, &m, &cfg);
                let size = m.to_json().len() + 1;
                models.push((m, size));
            }
        }
    }
    let mut lines = Vec::new();
    for (m, size) in &models {
        let r = evaluate(&ds, &split, m).map_err(|e| anyhow::anyhow!("evaluate: {e}"))?;
        println!("horizon {}d evaluation:", m.horizon_days);
        print_report(&r, m.min_history_days, &format!("its threshold p={:.4}", m.threshold));
        let (times, none) = scoring_times(m, &ds, &split);
        print_scoring(times, none, *size);
        lines.push(r.line());
    }
    print_summary(&lines);
    Ok(ExitCode::SUCCESS)
}

fn print_summary(lines: &[String]) {
    println!("summary:");
    for l in lines {
        println!("{l}");
    }
}

/// One line per fold's model: what it trained on and what the monotone rule dropped.
fn print_fold(f: usize, k: usize, fm: &FoldModel) {
    let s = &fm.summary;
    let negative = if s.negative.is_empty() {
        String::new()
    } else {
        format!("; negative, dropped: {}", s.negative.join(" "))
    };
    println!(
        "  fold {}/{k}: trained on {} drive-days ({} positive, from {} of {} drives), {} features, {} Newton steps, \
         threshold p={:.4}{negative}",
        f + 1,
        s.rows,
        s.positives,
        s.positive_drives,
        s.drives,
        fm.model.features.len(),
        s.newton_steps,
        fm.model.threshold
    );
}

/// `eval --folds K`: per horizon, K models (one per fold, each trained on the other folds), their held-out
/// scores pooled and evaluated once.
fn run_eval_folds(
    a: &EvalArgs,
    ds: &Dataset,
    source: &str,
    split: &Split,
    k: u32,
) -> anyhow::Result<ExitCode> {
    println!("split: {}", split.describe_folds(k));
    if a.horizons.is_empty() {
        bail!("--horizons is empty");
    }
    let mut lines = Vec::new();
    for &h in &a.horizons {
        let cfg = config(&a.data, ds, h, "disk-failure", source)?;
        let folds =
            cross_validate(ds, split, k, &cfg).map_err(|e| anyhow::anyhow!("train horizon {h}d: {e}"))?;
        println!("horizon {h}d models (one per fold):");
        if !cfg.exclude.is_empty() {
            println!("  excluded (--exclude): {}", cfg.exclude.join(" "));
        }
        for (f, fm) in folds.iter().enumerate() {
            print_fold(f, folds.len(), fm);
        }
        let parts: Vec<(&Split, &Model)> = folds.iter().map(|f| (&f.split, &f.model)).collect();
        let r = evaluate_pooled(ds, &parts).map_err(|e| anyhow::anyhow!("evaluate: {e}"))?;
        println!("horizon {h}d evaluation (pooled over {k} folds):");
        print_report(&r, cfg.min_history_days, "each fold's threshold");
        let (mut times, mut none) = (Vec::new(), 0);
        for f in &folds {
            let (t, n) = scoring_times(&f.model, ds, &f.split);
            times.extend(t);
            none += n;
        }
        let size = folds.iter().map(|f| f.model.to_json().len() + 1).max().unwrap_or(0);
        print_scoring(times, none, size);
        lines.push(r.line());
    }
    print_summary(&lines);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export_cmd::table::{self, Format, Val};

    /// `--from EXPORT_DIR` reads Parquet parts as it reads CSV ones: the same drive-days, the same dataset.
    #[test]
    fn an_export_directory_in_parquet_loads_like_its_csv_twin() {
        let t = table::disk_days();
        let col = |name: &str| t.cols.iter().position(|(n, _)| n == name).expect("column");
        let mut loaded = Vec::new();
        for f in [Format::Parquet, Format::Csv] {
            let dir = tempfile::tempdir().expect("tempdir");
            for d in 1..=5u32 {
                let day = format!("2026-11-{d:02}");
                let rows: Vec<table::Row> = (0..20u32)
                    .map(|s| {
                        let mut r = vec![Val::Null; t.cols.len()];
                        r[col("date")] = Val::Str(day.clone());
                        r[col("serial_number")] = Val::Str(format!("SN{s}"));
                        r[col("model")] = Val::Str("M".into());
                        r[col("capacity_bytes")] = Val::I64(4_000_787_030_016);
                        r[col("failure")] = Val::I32(i32::from(s == 3 && d == 5));
                        r[col("object")] = Val::Str(format!("disk/h{s}/sda"));
                        r[col("smart_5_raw")] = Val::F64(if s == 3 { f64::from(d * 8) } else { 0.0 });
                        r[col("smart_9_raw")] = Val::F64(f64::from(1000 + d * 24));
                        r
                    })
                    .collect();
                table::write_partition(dir.path(), &t, &day, &rows, f).expect("write");
            }
            let (ds, _) = load(&[dir.path().to_path_buf()]).expect("load");
            loaded.push((ds.rows.len(), ds.drives.len(), ds.features.iter().filter(|x| !x.is_nan()).count()));
        }
        assert_eq!(loaded[0], loaded[1], "parquet vs csv");
        assert_eq!(loaded[0].0, 100);
        let dir = tempfile::tempdir().expect("tempdir");
        let part = dir.path().join("disk_days/day=2026-12-01");
        std::fs::create_dir_all(&part).expect("mkdir");
        std::fs::write(part.join("part-0.parquet"), b"PAR1").expect("write");
        let Err(e) = load(&[dir.path().to_path_buf()]) else { panic!("a corrupt part loaded") };
        let e = format!("{e:#}");
        assert!(e.contains("not a readable Parquet part"), "{e}");
    }
}
