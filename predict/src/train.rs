//! Training: an L2-regularised, class-weighted logistic regression fitted by Newton's method (IRLS),
//! hand-written.
//!
//! Why by hand and not linfa/smartcore: the model is a few dozen weights, Newton's method on it is ~100
//! lines with a Cholesky solve, it converges in a handful of steps to the unique optimum (the L2 term makes
//! the loss strictly convex), and the result is bit-for-bit deterministic — no new dependency tree, no BLAS.
//! Logistic regression rather than trees because each feature's term is the explanation an operator reads
//! (see [`crate::Model::score`]'s top contributions) and because the agent scores it in microseconds.

use crate::data::{COUNTER_ATTRIBUTES, Dataset, Side, Split, mix64};
use crate::eval::{logit_of_row, tpr_at_fpr};
use crate::{Feature, MODEL_FORMAT, Model, TrainInfo, sigmoid};

/// Most training rows in one fit before negatives are subsampled (with weights that undo the sampling):
/// bounds the fit's memory (rows x features x 8 bytes: ~130 MB at 40 features) and time (a Newton step is
/// O(rows x features^2)).
pub const MAX_TRAIN_ROWS: usize = 400_000;
/// Newton steps at most. The L2-regularised loss is strictly convex and Newton converges quadratically;
/// on the fixtures it stops after 8-12 steps. The cap guards against a pathological input.
pub const MAX_NEWTON_STEPS: usize = 50;
/// Step halvings at most in one Newton step's line search.
pub const MAX_HALVINGS: usize = 30;
/// Stop when no coefficient moves by more than this.
pub const TOLERANCE: f64 = 1e-9;
/// Disk models made into one-hot features at most (the most common ones among training drives).
pub const MAX_MODEL_FEATURES: usize = 12;
/// A disk model needs this many training drives to get its own feature (fewer would fit noise).
pub const MIN_MODEL_DRIVES: usize = 200;
/// A feature whose training standard deviation is below this is constant there and dropped (its scale
/// would be 0).
const MIN_SCALE: f64 = 1e-9;

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub name: String,
    pub horizon_days: u32,
    /// Drive-days with less history are neither trained on nor scored.
    pub min_history_days: u32,
    /// L2 penalty on the standardised weights, relative to the (weighted) mean log-loss.
    pub l2: f64,
    /// Seeds the negative subsampling.
    pub seed: u64,
    /// The model's threshold is its score at this FPR on the training drive-days.
    pub target_fpr: f64,
    /// Add disk-model one-hot features.
    pub model_features: bool,
    /// Error counters' features may not lower the risk (see [`is_counter`]).
    pub monotone: bool,
    /// [`MAX_TRAIN_ROWS`] unless a test sets a smaller one.
    pub max_train_rows: usize,
    /// Free text for [`TrainInfo::source`].
    pub source: String,
    /// Feature names (`raw_9`) left out, e.g. those a snapshot's sampling confounds.
    pub exclude: Vec<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: "disk-failure".into(),
            horizon_days: 30,
            min_history_days: 7,
            l2: 1e-2,
            seed: 1,
            target_fpr: 0.01,
            model_features: true,
            monotone: true,
            max_train_rows: MAX_TRAIN_ROWS,
            source: String::new(),
            exclude: Vec::new(),
        }
    }
}

/// What training did, for the command to print.
#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub rows: u64,
    pub positives: u64,
    pub drives: u64,
    pub positive_drives: u64,
    /// Fraction of negative rows kept (1.0: all).
    pub negative_rate: f64,
    pub newton_steps: usize,
    /// Candidate features dropped as constant or absent in the training rows.
    pub dropped: Vec<String>,
    /// Error-counter features dropped for a negative weight (`monotone`).
    pub negative: Vec<String>,
}

/// A feature of an error counter ([`COUNTER_ATTRIBUTES`]): more of it can never mean less risk.
pub fn is_counter(f: &Feature) -> bool {
    match f {
        Feature::Raw { attr } | Feature::NonZero { attr } | Feature::Delta { attr, .. } => {
            COUNTER_ATTRIBUTES.contains(attr)
        }
        Feature::AnyNonZero { attrs } => attrs.iter().all(|a| COUNTER_ATTRIBUTES.contains(a)),
        Feature::ModelIs { .. } => false,
    }
}

/// Train a model on the training side of `split`.
pub fn train(ds: &Dataset, split: &Split, cfg: &TrainConfig) -> Result<(Model, TrainSummary), String> {
    if !(cfg.l2 > 0.0 && cfg.l2.is_finite()) {
        return Err(format!("l2 {} must be a positive number", cfg.l2));
    }
    if !(cfg.target_fpr > 0.0 && cfg.target_fpr < 1.0) {
        return Err(format!("target FPR {} must be strictly between 0 and 1", cfg.target_fpr));
    }
    let rows: Vec<usize> = (0..ds.rows.len())
        .filter(|&i| split.side(ds, i) == Some(Side::Train) && ds.rows[i].span as u32 >= cfg.min_history_days)
        .collect();
    let labels_all: Vec<bool> = rows.iter().map(|&i| ds.label(i, cfg.horizon_days)).collect();
    let pos = labels_all.iter().filter(|l| **l).count();
    let neg = rows.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(format!(
            "the training side has {pos} positive and {neg} negative drive-days (with >= {} days of history); \
             both are needed",
            cfg.min_history_days
        ));
    }

    // Features: the candidates, plus one-hots of the common disk models among training drives.
    let mut features: Vec<Feature> =
        ds.candidates.iter().filter(|f| !cfg.exclude.contains(&f.name())).cloned().collect();
    let mut drive_seen = vec![false; ds.drives.len()];
    let mut per_model: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut positive_drives = std::collections::BTreeSet::new();
    for (k, &i) in rows.iter().enumerate() {
        let d = ds.rows[i].drive as usize;
        if !drive_seen[d] {
            drive_seen[d] = true;
            *per_model.entry(ds.drives[d].model.as_str()).or_default() += 1;
        }
        if labels_all[k] {
            positive_drives.insert(d);
        }
    }
    let drives = drive_seen.iter().filter(|s| **s).count();
    if cfg.model_features {
        let mut models: Vec<(&str, usize)> =
            per_model.into_iter().filter(|(m, n)| !m.is_empty() && *n >= MIN_MODEL_DRIVES).collect();
        models.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        features.extend(
            models.iter().take(MAX_MODEL_FEATURES).map(|(m, _)| Feature::ModelIs { model: m.to_string() }),
        );
    }

    // Negative subsampling, deterministic given the seed and the dataset's row order.
    let keep_neg = cfg.max_train_rows.saturating_sub(pos).max(1);
    let negative_rate = if neg > keep_neg { keep_neg as f64 / neg as f64 } else { 1.0 };
    let threshold_u = (negative_rate * (1u64 << 53) as f64) as u64;
    let seed = mix64(cfg.seed);
    let sample: Vec<usize> = (0..rows.len())
        .filter(|&k| {
            labels_all[k] || negative_rate >= 1.0 || (mix64(seed ^ rows[k] as u64) >> 11) < threshold_u
        })
        .collect();

    // Standardisation over present values (a missing value is the mean: z = 0, as in scoring).
    let mut mean = Vec::new();
    let mut scale = Vec::new();
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for f in &features {
        let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
        for &k in &sample {
            if let Some(x) = ds.feature_value(rows[k], f) {
                n += 1.0;
                s += x;
                s2 += x * x;
            }
        }
        let m = if n > 0.0 { s / n } else { 0.0 };
        let var = if n > 0.0 { (s2 / n - m * m).max(0.0) } else { 0.0 };
        if var.sqrt() < MIN_SCALE {
            dropped.push(f.name());
            continue;
        }
        kept.push(f.clone());
        mean.push(m);
        scale.push(var.sqrt());
    }
    if kept.is_empty() {
        return Err("every feature is constant or absent in the training rows".into());
    }
    let d = kept.len();
    let n = sample.len();
    let mut x = vec![0.0; n * d];
    let mut y = vec![false; n];
    let mut w = vec![0.0; n];
    for (r, &k) in sample.iter().enumerate() {
        for (j, f) in kept.iter().enumerate() {
            if let Some(v) = ds.feature_value(rows[k], f) {
                x[r * d + j] = (v - mean[j]) / scale[j];
            }
        }
        y[r] = labels_all[k];
        // Balanced classes: positives and negatives each carry half the total weight; a kept negative
        // stands for 1/rate negatives.
        w[r] = if y[r] { 0.5 / pos as f64 } else { 0.5 / neg as f64 / negative_rate };
    }
    // Fit; with `monotone`, an error counter's feature that gets a negative weight (more errors, less risk:
    // noise, or a vendor's packed raw value) is dropped, the most negative first, and the rest refitted.
    let mut active: Vec<usize> = (0..d).collect();
    let mut negative = Vec::new();
    let mut steps = 0;
    let (weights, bias) = loop {
        let xs: Vec<f64> =
            (0..n).flat_map(|r| active.iter().map(move |&j| (r, j))).map(|(r, j)| x[r * d + j]).collect();
        let (wts, b, st) = fit_logistic(&xs, &y, &w, active.len(), cfg.l2)?;
        steps += st;
        let worst = (0..active.len())
            .filter(|&j| cfg.monotone && wts[j] < 0.0 && is_counter(&kept[active[j]]))
            .min_by(|&a, &b| wts[a].total_cmp(&wts[b]));
        match worst {
            None => break (wts, b),
            Some(j) => {
                negative.push(kept[active[j]].name());
                active.remove(j);
                if active.is_empty() {
                    return Err("every feature got a negative weight on an error counter".into());
                }
            }
        }
    };
    let kept: Vec<Feature> = active.iter().map(|&j| kept[j].clone()).collect();
    let mean: Vec<f64> = active.iter().map(|&j| mean[j]).collect();
    let scale: Vec<f64> = active.iter().map(|&j| scale[j]).collect();

    let (from_day, to_day) = rows.iter().fold((u32::MAX, 0), |(lo, hi), &i| {
        let day = ds.rows[i].day;
        (lo.min(day), hi.max(day))
    });
    let mut model = Model {
        format: MODEL_FORMAT,
        name: cfg.name.clone(),
        horizon_days: cfg.horizon_days,
        min_history_days: cfg.min_history_days,
        features: kept,
        mean,
        scale,
        weights,
        bias,
        threshold: 0.5,
        trained: TrainInfo {
            source: cfg.source.clone(),
            from_day,
            to_day,
            rows: rows.len() as u64,
            positives: pos as u64,
        },
    };
    // Threshold: the training drive-days' score at the target FPR (on the sample: subsampling negatives
    // uniformly keeps their quantiles).
    let scores: Vec<f64> = sample.iter().map(|&k| logit_of_row(&model, ds, rows[k])).collect();
    let op = tpr_at_fpr(&scores, &y, cfg.target_fpr).ok_or("no operating point on the training rows")?;
    let p = if op.threshold.is_finite() { sigmoid(op.threshold) } else { 1.0 - 1e-12 };
    model.threshold = p.clamp(1e-12, 1.0 - 1e-12);
    model.validate().map_err(|e| format!("trained model is invalid: {e}"))?;
    Ok((
        model,
        TrainSummary {
            rows: rows.len() as u64,
            positives: pos as u64,
            drives: drives as u64,
            positive_drives: positive_drives.len() as u64,
            negative_rate,
            newton_steps: steps,
            dropped,
            negative,
        },
    ))
}

/// One fold of a cross-validation: the split holding the fold's drives out, the model trained on the
/// other folds' drives, and what that training did.
#[derive(Debug, Clone)]
pub struct FoldModel {
    pub split: Split,
    pub model: Model,
    pub summary: TrainSummary,
}

/// `folds`-fold cross-validation by drive: for each fold of `split.folds(folds)`, a model trained on the
/// other folds exactly as [`train`] trains (same features, exclusions, monotone rule, balanced weights).
/// Read the result with [`crate::eval::evaluate_pooled`]: each fold's model scores only its own drives.
pub fn cross_validate(
    ds: &Dataset,
    split: &Split,
    folds: u32,
    cfg: &TrainConfig,
) -> Result<Vec<FoldModel>, String> {
    let splits = split.folds(folds)?;
    let k = splits.len();
    splits
        .into_iter()
        .enumerate()
        .map(|(f, split)| {
            let (model, summary) =
                train(ds, &split, cfg).map_err(|e| format!("fold {} of {k}: {e}", f + 1))?;
            Ok(FoldModel { split, model, summary })
        })
        .collect()
}

/// Weighted mean log-loss plus `l2/2 * |w|^2` (the bias is not penalised).
fn loss(x: &[f64], y: &[bool], w: &[f64], d: usize, beta: &[f64], l2: f64) -> f64 {
    let mut total = 0.0;
    for r in 0..y.len() {
        let z = beta[d] + (0..d).map(|j| beta[j] * x[r * d + j]).sum::<f64>();
        // log(1 + e^z) - y z, stably.
        let softplus = if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() };
        total += w[r] * (softplus - if y[r] { z } else { 0.0 });
    }
    total + 0.5 * l2 * beta[..d].iter().map(|b| b * b).sum::<f64>()
}

/// Fit `beta` (d weights, then the bias) by Newton's method with step halving. Rows are standardised
/// features `x` (row-major, `d` per row), labels `y` and weights `w` summing to 1.
pub fn fit_logistic(
    x: &[f64],
    y: &[bool],
    w: &[f64],
    d: usize,
    l2: f64,
) -> Result<(Vec<f64>, f64, usize), String> {
    let n = y.len();
    if x.len() != n * d || w.len() != n || n == 0 {
        return Err("training matrix has inconsistent sizes".into());
    }
    let m = d + 1;
    let mut beta = vec![0.0; m];
    let sw: f64 = w.iter().sum();
    let pw: f64 = (0..n).filter(|&r| y[r]).map(|r| w[r]).sum();
    if pw > 0.0 && pw < sw {
        beta[d] = (pw / (sw - pw)).ln();
    }
    let mut current = loss(x, y, w, d, &beta, l2);
    let mut steps = 0;
    for _ in 0..MAX_NEWTON_STEPS {
        steps += 1;
        let mut grad = vec![0.0; m];
        let mut hess = vec![0.0; m * m];
        let mut row = vec![0.0; m];
        for r in 0..n {
            row[..d].copy_from_slice(&x[r * d..(r + 1) * d]);
            row[d] = 1.0;
            let z: f64 = (0..m).map(|j| beta[j] * row[j]).sum();
            let p = sigmoid(z);
            let g = w[r] * (p - if y[r] { 1.0 } else { 0.0 });
            let h = w[r] * p * (1.0 - p);
            for a in 0..m {
                grad[a] += g * row[a];
                let ha = h * row[a];
                if ha != 0.0 {
                    for b in 0..=a {
                        hess[a * m + b] += ha * row[b];
                    }
                }
            }
        }
        for a in 0..m {
            for b in 0..a {
                hess[b * m + a] = hess[a * m + b];
            }
        }
        for j in 0..d {
            grad[j] += l2 * beta[j];
            hess[j * m + j] += l2;
        }
        // A tiny ridge on the bias keeps the system positive definite when every row is separable.
        hess[d * m + d] += 1e-12;
        let step = cholesky_solve(&mut hess, &grad, m).ok_or("Newton system is not positive definite")?;
        let mut t = 1.0;
        let mut next: Vec<f64>;
        let mut halvings = 0;
        loop {
            next = beta.iter().zip(&step).map(|(b, s)| b - t * s).collect();
            let l = loss(x, y, w, d, &next, l2);
            if l <= current + 1e-15 || halvings >= MAX_HALVINGS {
                current = l;
                break;
            }
            t *= 0.5;
            halvings += 1;
        }
        let moved = step.iter().map(|s| (t * s).abs()).fold(0.0, f64::max);
        beta = next;
        if moved < TOLERANCE {
            break;
        }
    }
    if beta.iter().any(|b| !b.is_finite()) {
        return Err("the fit diverged (non-finite weights)".into());
    }
    let bias = beta[d];
    beta.truncate(d);
    Ok((beta, bias, steps))
}

/// Solve `A x = b` for a symmetric positive definite `A` (n x n, overwritten by its Cholesky factor).
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        if s <= 0.0 || !s.is_finite() {
            return None;
        }
        let l = s.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / l;
        }
    }
    let mut z = vec![0.0; n];
    for i in 0..n {
        let s: f64 = b[i] - (0..i).map(|k| a[i * n + k] * z[k]).sum::<f64>();
        z[i] = s / a[i * n + i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = z[i] - (i + 1..n).map(|k| a[k * n + i] * x[k]).sum::<f64>();
        x[i] = s / a[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{DriveDay, HeldOut};

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, &[2.0, 1.0], 2).expect("spd");
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        assert!(cholesky_solve(&mut [0.0, 0.0, 0.0, 0.0], &[1.0, 1.0], 2).is_none());
    }

    #[test]
    fn logistic_fit_recovers_a_known_direction_and_is_deterministic() {
        // y = 1 when x0 + noise-ish term > 0; x1 is irrelevant.
        let n = 2000;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let a = ((mix64(i) >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0;
            let b = ((mix64(i + 99_999) >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0;
            let noise = ((mix64(i + 7_777_777) >> 11) as f64 / (1u64 << 53) as f64) - 0.5;
            x.extend([a, b]);
            y.push(a + noise > 0.0);
        }
        let w = vec![1.0 / n as f64; n as usize];
        let (beta, bias, steps) = fit_logistic(&x, &y, &w, 2, 1e-4).expect("fit");
        assert!(beta[0] > 3.0 && beta[1].abs() < 0.5 && bias.abs() < 0.5, "{beta:?} {bias}");
        assert!(steps < MAX_NEWTON_STEPS, "{steps}");
        assert_eq!(fit_logistic(&x, &y, &w, 2, 1e-4).expect("fit"), (beta, bias, steps));
        // Perfectly separable data still converges (the L2 term bounds the weights).
        let ys: Vec<bool> = (0..n as usize).map(|r| x[r * 2] > 0.0).collect();
        let (b2, _, _) = fit_logistic(&x, &ys, &w, 2, 1e-2).expect("separable");
        assert!(b2.iter().all(|b| b.is_finite()));
    }

    #[test]
    fn trains_a_model_that_scores_failing_drives_higher() {
        let mut ds = Dataset::new();
        for s in 0..400u32 {
            let failing = s % 10 == 0;
            for d in 0..30u32 {
                let grown = if failing && d > 15 { (d - 15) as f64 * 8.0 } else { 0.0 };
                ds.push(DriveDay {
                    day: 1000 + d,
                    serial: format!("S{s}"),
                    model: "M".into(),
                    failure: failing && d == 29,
                    raw: [(5, grown), (9, (1000 + s * 10 + d) as f64), (197, 0.0)].into(),
                })
                .expect("push");
            }
        }
        let split = Split::Drive { held_out: HeldOut::Fraction(0.3), seed: 3 };
        let cfg = TrainConfig { horizon_days: 10, min_history_days: 1, ..Default::default() };
        let (model, summary) = train(&ds, &split, &cfg).expect("train");
        assert!(summary.positives > 0 && summary.dropped.contains(&"raw_197".to_string()), "{summary:?}");
        assert!(!model.features.iter().any(|f| matches!(f, Feature::ModelIs { .. })), "one model: constant");
        let back = Model::from_json(model.to_json().as_bytes()).expect("valid file");
        assert_eq!(back.features, model.features);
        // serde_json's float text round-trips to within an ulp.
        for (a, b) in back.weights.iter().zip(&model.weights).chain(back.mean.iter().zip(&model.mean)) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} {b}");
        }
        let report = crate::eval::evaluate(&ds, &split, &model).expect("eval");
        assert!(report.auc.expect("auc") > 0.9, "{}", report.line());
        // Scoring through the agent's API agrees with the stored-feature path on every drive's last day.
        for (id, h) in ds.histories.iter().enumerate() {
            let last = ds.rows.iter().rposition(|r| r.drive as usize == id).expect("row");
            let p = model.score(h).expect("history").probability;
            let q = sigmoid(logit_of_row(&model, &ds, last));
            assert!((p - q).abs() < 1e-5, "{p} {q}");
        }
        let again = train(&ds, &split, &cfg).expect("train").0;
        assert_eq!(again.to_json(), model.to_json(), "deterministic");
        // Over the row limit, negatives are subsampled (every positive kept) and the model still ranks well.
        let small = TrainConfig { max_train_rows: 3000, ..cfg.clone() };
        let (m2, s2) = train(&ds, &split, &small).expect("train subsampled");
        let kept = s2.positives as f64 + (s2.rows - s2.positives) as f64 * s2.negative_rate;
        assert!(s2.negative_rate < 1.0 && (kept - 3000.0).abs() < 1.0, "{s2:?}");
        assert!(crate::eval::evaluate(&ds, &split, &m2).expect("eval").auc.expect("auc") > 0.9);
        let at_limit = TrainConfig { max_train_rows: s2.rows as usize, ..cfg.clone() };
        assert_eq!(
            train(&ds, &split, &at_limit).expect("train").1.negative_rate,
            1.0,
            "at the limit: no sampling"
        );
    }

    #[test]
    fn cross_validation_trains_each_fold_on_the_others_and_covers_every_drive() {
        let mut ds = Dataset::new();
        for s in 0..300u32 {
            let failing = s % 10 == 0;
            for d in 0..20u32 {
                let grown = if failing && d > 10 { f64::from(d - 10) * 5.0 } else { 0.0 };
                ds.push(DriveDay {
                    day: 1000 + d,
                    serial: format!("S{s}"),
                    model: "M".into(),
                    failure: failing && d == 19,
                    raw: [(5, grown), (197, f64::from(s % 3))].into(),
                })
                .expect("push");
            }
        }
        let base = Split::Drive { held_out: HeldOut::Fraction(0.3), seed: 5 };
        let cfg = TrainConfig { horizon_days: 10, min_history_days: 1, ..Default::default() };
        let folds = cross_validate(&ds, &base, 4, &cfg).expect("cv");
        assert_eq!(folds.len(), 4);
        for f in &folds {
            // Trained on exactly the rows of the drives outside the fold, as `train` alone would be.
            let train_rows =
                (0..ds.rows.len()).filter(|&i| f.split.side(&ds, i) == Some(Side::Train)).count();
            assert_eq!(f.summary.rows as usize, train_rows);
            assert_eq!(train(&ds, &f.split, &cfg).expect("train").0.to_json(), f.model.to_json());
        }
        let parts: Vec<(&Split, &Model)> = folds.iter().map(|f| (&f.split, &f.model)).collect();
        let r = crate::eval::evaluate_pooled(&ds, &parts).expect("pooled");
        assert_eq!((r.rows as usize, r.drives as usize), (ds.rows.len(), ds.drives.len()), "all, once");
        assert!(r.auc.expect("auc") > 0.9, "{}", r.line());
        let e = cross_validate(&ds, &base, 1, &cfg).expect_err("k = 1");
        assert!(e.contains("2..=20"), "{e}");
    }

    #[test]
    fn refuses_a_training_side_without_both_classes() {
        let mut ds = Dataset::new();
        for d in 0..10 {
            ds.push(DriveDay {
                day: d,
                serial: "A".into(),
                model: "M".into(),
                failure: false,
                raw: [(5, 0.0)].into(),
            })
            .expect("push");
        }
        let e =
            train(&ds, &Split::Drive { held_out: HeldOut::Fraction(0.0), seed: 1 }, &TrainConfig::default())
                .expect_err("x");
        assert!(e.contains("0 positive"), "{e}");
    }
}
