//! Evaluation: ROC AUC, the true-positive rate at a false-positive rate, precision/recall at a threshold,
//! and the baseline rule, over held-out drive-days.
//!
//! Scores are ranked as log-odds (not probabilities, which saturate to 1.0 and would tie); a drive-day the
//! model gives no prediction (too little history) scores minus infinity: it is never flagged, so it counts
//! as a miss when it is positive — what an operator would see.

use crate::data::{Dataset, Side, Split};
use crate::{Model, NoPrediction};

/// One operating point of a score: flag a drive-day when its score is at or above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Operating {
    pub threshold: f64,
    pub tpr: f64,
    pub fpr: f64,
}

/// Confusion counts of a binary decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub tn: u64,
    pub fn_: u64,
}

impl Counts {
    pub fn add(&mut self, flagged: bool, label: bool) {
        match (flagged, label) {
            (true, true) => self.tp += 1,
            (true, false) => self.fp += 1,
            (false, false) => self.tn += 1,
            (false, true) => self.fn_ += 1,
        }
    }
    fn ratio(a: u64, b: u64) -> f64 {
        if b == 0 { 0.0 } else { a as f64 / b as f64 }
    }
    /// Recall.
    pub fn tpr(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fn_)
    }
    pub fn fpr(&self) -> f64 {
        Self::ratio(self.fp, self.fp + self.tn)
    }
    pub fn precision(&self) -> f64 {
        Self::ratio(self.tp, self.tp + self.fp)
    }
}

/// Indices sorted by score, highest first (NaN is treated as the lowest).
fn order_desc(scores: &[f64]) -> Vec<usize> {
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| key(scores[b]).total_cmp(&key(scores[a])).then(a.cmp(&b)));
    idx
}

/// ROC AUC: the probability that a random positive scores above a random negative, ties counting half
/// (the Mann-Whitney statistic). `None` without both classes.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 || scores.len() != labels.len() {
        return None;
    }
    let idx = order_desc(scores);
    // Walk groups of equal scores from the top; each positive in a group beats the negatives below it and
    // ties with the group's negatives.
    let (mut wins, mut neg_below_seen) = (0.0, 0.0);
    let mut i = 0;
    let eq = |a: f64, b: f64| a == b || (a.is_nan() && b.is_nan());
    while i < idx.len() {
        let s = scores[idx[i]];
        let mut j = i;
        let (mut p, mut n) = (0.0, 0.0);
        while j < idx.len() && eq(scores[idx[j]], s) {
            if labels[idx[j]] {
                p += 1.0
            } else {
                n += 1.0
            }
            j += 1;
        }
        neg_below_seen += n;
        // Negatives strictly below this group: neg - neg_below_seen.
        wins += p * (neg - neg_below_seen) + 0.5 * p * n;
        i = j;
    }
    Some(wins / (pos * neg))
}

/// The operating point with the highest TPR whose FPR is at most `max_fpr`, flagging whole groups of tied
/// scores at once (a tie is never split, so the point is reachable with a threshold). With no positives or
/// no negatives: `None`. When even the top score's group exceeds `max_fpr`: TPR 0 at threshold +inf.
pub fn tpr_at_fpr(scores: &[f64], labels: &[bool], max_fpr: f64) -> Option<Operating> {
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 || scores.len() != labels.len() {
        return None;
    }
    let idx = order_desc(scores);
    let mut best = Operating { threshold: f64::INFINITY, tpr: 0.0, fpr: 0.0 };
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        if s.is_nan() || s == f64::NEG_INFINITY {
            break; // no prediction is never a flag
        }
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        let fpr = fp / neg;
        if fpr > max_fpr {
            break;
        }
        best = Operating { threshold: s, tpr: tp / pos, fpr };
    }
    Some(best)
}

/// The model's log-odds for dataset row `i` from its stored feature values (the same sum as
/// [`Model::score`]), or minus infinity when the drive had too little history that day.
pub fn logit_of_row(model: &Model, ds: &Dataset, i: usize) -> f64 {
    if (ds.rows[i].span as u32) < model.min_history_days {
        return f64::NEG_INFINITY;
    }
    let mut logit = model.bias;
    for (k, f) in model.features.iter().enumerate() {
        if let Some(x) = ds.feature_value(i, f) {
            logit += model.weights[k] * (x - model.mean[k]) / model.scale[k];
        }
    }
    logit
}

/// `ln(p / (1 - p))`.
pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// What `huatuo predict eval` prints for one horizon.
#[derive(Debug, Clone)]
pub struct HorizonReport {
    pub horizon_days: u32,
    /// Held-out drive-days and how many are positive (fail within the horizon), and the drives behind them.
    pub rows: u64,
    pub positives: u64,
    pub drives: u64,
    pub positive_drives: u64,
    /// Held-out drive-days the model gave no prediction (too little history): never flagged.
    pub no_prediction: u64,
    pub auc: Option<f64>,
    pub baseline: Counts,
    /// The model at the baseline's own FPR, at 1% and at 0.1%.
    pub model_at_baseline_fpr: Option<Operating>,
    pub model_at_1pct: Option<Operating>,
    pub model_at_01pct: Option<Operating>,
    /// The model at its own threshold.
    pub at_threshold: Counts,
    /// Of the drives with a positive day, how many the model flagged on at least one positive day at the 1%
    /// operating point, and how many the baseline did.
    pub drives_caught_1pct: u64,
    pub drives_caught_baseline: u64,
}

/// Evaluate `model` on the held-out side of `split` at the model's horizon.
pub fn evaluate(ds: &Dataset, split: &Split, model: &Model) -> Result<HorizonReport, String> {
    evaluate_pooled(ds, &[(split, model)])
}

/// The held-out rows of `split` and `model`'s log-odds for them.
fn held_out_scores(ds: &Dataset, split: &Split, model: &Model) -> (Vec<usize>, Vec<f64>) {
    let idx: Vec<usize> = (0..ds.rows.len()).filter(|&i| split.side(ds, i) == Some(Side::Eval)).collect();
    let scores = idx.iter().map(|&i| logit_of_row(model, ds, i)).collect();
    (idx, scores)
}

/// Evaluate several (split, model) pairs as one: each model scores its own split's held-out rows and the
/// scores are pooled, then ranked together, as if one model had produced them. This is how a
/// cross-validation is read: every drive is held out by exactly one fold, so the pool covers each drive once
/// and the figures rest on all of them instead of one hold-out's share. The models' log-odds are compared as
/// they are (each fold's model is fitted the same way on most of the same drives, so their scales agree
/// closely; the common practice, and ARCHITECTURE.md says so). A row held out by two pairs, or models of
/// different horizons, are refused: the pool would count a drive-day twice or mix labels.
pub fn evaluate_pooled(ds: &Dataset, parts: &[(&Split, &Model)]) -> Result<HorizonReport, String> {
    let h = parts.first().ok_or("nothing to evaluate: no models")?.1.horizon_days;
    if let Some((_, m)) = parts.iter().find(|(_, m)| m.horizon_days != h) {
        return Err(format!("models of {h}d and {}d horizons cannot be pooled", m.horizon_days));
    }
    let mut idx = Vec::new();
    let mut scores = Vec::new();
    // Each row's own model's threshold, as log-odds: a pooled row is flagged by the model that scored it.
    let mut flag_at = Vec::new();
    let mut seen = vec![false; ds.rows.len()];
    for (split, model) in parts {
        let (rows, s) = held_out_scores(ds, split, model);
        for &i in &rows {
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("drive-day {i} is held out twice: the splits overlap"));
            }
        }
        flag_at.extend(std::iter::repeat_n(logit(model.threshold), rows.len()));
        idx.extend(rows);
        scores.extend(s);
    }
    if idx.is_empty() {
        return Err("no held-out drive-days: the split leaves nothing to evaluate".into());
    }
    Ok(report(ds, h, &idx, &scores, &flag_at))
}

/// The figures of held-out rows `idx` (dataset row indices) with their log-odds `scores`, each flagged at
/// its model's threshold `flag_at` (log-odds).
fn report(ds: &Dataset, h: u32, idx: &[usize], scores: &[f64], flag_at: &[f64]) -> HorizonReport {
    let labels: Vec<bool> = idx.iter().map(|&i| ds.label(i, h)).collect();
    let mut baseline = Counts::default();
    let mut at_threshold = Counts::default();
    for (k, &i) in idx.iter().enumerate() {
        baseline.add(ds.rows[i].baseline, labels[k]);
        at_threshold.add(scores[k] >= flag_at[k], labels[k]);
    }
    let model_at_1pct = tpr_at_fpr(scores, &labels, 0.01);
    let mut drives = std::collections::BTreeSet::new();
    let mut pos_drives = std::collections::BTreeSet::new();
    let mut caught = std::collections::BTreeSet::new();
    let mut caught_baseline = std::collections::BTreeSet::new();
    for (k, &i) in idx.iter().enumerate() {
        let d = ds.rows[i].drive;
        drives.insert(d);
        if labels[k] {
            pos_drives.insert(d);
            if model_at_1pct.is_some_and(|o| scores[k] >= o.threshold) {
                caught.insert(d);
            }
            if ds.rows[i].baseline {
                caught_baseline.insert(d);
            }
        }
    }
    HorizonReport {
        horizon_days: h,
        rows: idx.len() as u64,
        positives: labels.iter().filter(|l| **l).count() as u64,
        drives: drives.len() as u64,
        positive_drives: pos_drives.len() as u64,
        no_prediction: scores.iter().filter(|s| **s == f64::NEG_INFINITY).count() as u64,
        auc: auc(scores, &labels),
        model_at_baseline_fpr: tpr_at_fpr(scores, &labels, baseline.fpr()),
        model_at_1pct,
        model_at_01pct: tpr_at_fpr(scores, &labels, 0.001),
        baseline,
        at_threshold,
        drives_caught_1pct: caught.len() as u64,
        drives_caught_baseline: caught_baseline.len() as u64,
    }
}

impl HorizonReport {
    /// The line: `horizon 30d: model TPR 61.2% at baseline FPR 3.1% vs baseline TPR 44.0%; model TPR
    /// 38.5% at FPR 1%; AUC 0.87`.
    pub fn line(&self) -> String {
        let pct = |o: Option<Operating>| o.map_or("n/a".to_string(), |o| format!("{:.1}%", o.tpr * 100.0));
        format!(
            "horizon {}d: model TPR {} at baseline FPR {:.1}% vs baseline TPR {:.1}%; model TPR {} at FPR 1%; AUC {}",
            self.horizon_days,
            pct(self.model_at_baseline_fpr),
            self.baseline.fpr() * 100.0,
            self.baseline.tpr() * 100.0,
            pct(self.model_at_1pct),
            self.auc.map_or("n/a".to_string(), |a| format!("{a:.2}")),
        )
    }

    /// The floor of issue 20: the model's TPR at the baseline's FPR beats the baseline's TPR.
    pub fn beats_baseline(&self) -> bool {
        self.model_at_baseline_fpr.is_some_and(|o| o.tpr > self.baseline.tpr())
    }
}

/// Score every history through [`Model::score`] (the agent's path), for timing and as a check that it agrees
/// with [`logit_of_row`]. Returns how many got a prediction.
pub fn score_histories(model: &Model, histories: &[crate::DiskHistory]) -> (usize, usize) {
    let mut scored = 0;
    let mut none = 0;
    for h in histories {
        match model.score(h) {
            Ok(_) => scored += 1,
            Err(NoPrediction::TooLittleHistory { .. }) => none += 1,
        }
    }
    (scored, none)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_on_known_inputs() {
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]), Some(1.0));
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[true, false, true, false]), Some(0.5));
        // 3 positives x 2 negatives: pairs won 0.9>0.7,0.9>0.3,0.7=0.7 (half),0.7>0.3,0.2<0.7,0.2<0.3 -> 3.5/6.
        let a = auc(&[0.9, 0.7, 0.2, 0.7, 0.3], &[true, true, true, false, false]).expect("auc");
        assert!((a - 3.5 / 6.0).abs() < 1e-12, "{a}");
        assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(auc(&[], &[]), None);
        let a = auc(&[f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0], &[true, false, false]).expect("auc");
        assert!((a - 0.25).abs() < 1e-12, "{a}");
    }

    #[test]
    fn tpr_at_fpr_edges() {
        // 4 positives, 10 negatives.
        let scores = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2];
        let labels =
            [true, true, false, true, false, false, false, false, false, false, false, false, false, true];
        let o = tpr_at_fpr(&scores, &labels, 0.0).expect("op");
        assert_eq!((o.tpr, o.fpr, o.threshold), (0.5, 0.0, 9.0));
        let o = tpr_at_fpr(&scores, &labels, 0.1).expect("op");
        assert_eq!((o.tpr, o.fpr, o.threshold), (0.75, 0.1, 7.0));
        let o = tpr_at_fpr(&scores, &labels, 1.0).expect("op");
        assert_eq!((o.tpr, o.fpr), (1.0, 1.0));
        // A tie that straddles the limit is not split.
        let o = tpr_at_fpr(&[1.0, 1.0, 1.0], &[true, false, false], 0.5).expect("op");
        assert_eq!((o.tpr, o.threshold), (0.0, f64::INFINITY));
        // No prediction is never flagged, whatever the FPR allowed.
        let o = tpr_at_fpr(&[f64::NEG_INFINITY, 0.0], &[true, false], 1.0).expect("op");
        assert_eq!(o.tpr, 0.0);
        assert_eq!(tpr_at_fpr(&[1.0], &[false], 0.5), None);
    }

    #[test]
    fn counts_ratios() {
        let mut c = Counts::default();
        assert_eq!((c.tpr(), c.fpr(), c.precision()), (0.0, 0.0, 0.0));
        for (f, l) in [(true, true), (true, false), (false, true), (false, false), (false, false)] {
            c.add(f, l);
        }
        assert_eq!((c.tpr(), c.precision()), (0.5, 0.5));
        assert!((c.fpr() - 1.0 / 3.0).abs() < 1e-12);
    }

    /// 300 drives over 20 days; every tenth fails on its last day after its reallocated sectors grew, and a
    /// few healthy ones carry a constant count (the baseline's false positives).
    fn drives() -> Dataset {
        let mut ds = Dataset::new();
        for s in 0..300u32 {
            for d in 0..20u32 {
                let failing = s % 10 == 0;
                let r5 = if failing {
                    f64::from(d * (s % 7))
                } else if s % 13 == 0 {
                    3.0
                } else {
                    0.0
                };
                ds.push(crate::data::DriveDay {
                    day: 100 + d,
                    serial: format!("S{s}"),
                    model: "M".into(),
                    failure: failing && d == 19,
                    raw: [(5, r5), (197, if s % 17 == 0 { 1.0 } else { 0.0 })].into(),
                })
                .expect("push");
            }
        }
        ds
    }

    /// A hand-made model over raw_5 and raw_197: folds get different weights so their scales differ.
    fn model(w5: f64, w197: f64, bias: f64) -> Model {
        Model {
            format: crate::MODEL_FORMAT,
            name: "m".into(),
            horizon_days: 7,
            min_history_days: 3,
            features: vec![crate::Feature::Raw { attr: 5 }, crate::Feature::Raw { attr: 197 }],
            mean: vec![0.1, 0.05],
            scale: vec![1.0, 0.3],
            weights: vec![w5, w197],
            bias,
            threshold: 0.3,
            trained: Default::default(),
        }
    }

    #[test]
    fn pooled_evaluation_is_the_evaluation_of_the_concatenated_scores() {
        use crate::data::HeldOut;
        let ds = drives();
        let base = Split::Time { cut_day: 110, held_out: HeldOut::Fraction(0.5), seed: 9 };
        let splits = base.folds(4).expect("folds");
        let models: Vec<Model> =
            (0..4).map(|f| model(1.0 + f as f64 * 0.5, 0.2 * f as f64, -3.0 + f as f64)).collect();
        let parts: Vec<(&Split, &Model)> = splits.iter().zip(&models).collect();
        let pooled = evaluate_pooled(&ds, &parts).expect("pooled");

        // The same figures by hand: each fold's held-out rows scored by its own model, concatenated.
        let (mut scores, mut labels, mut base_counts, mut at_t) =
            (Vec::new(), Vec::new(), Counts::default(), Counts::default());
        for (split, m) in &parts {
            for i in 0..ds.rows.len() {
                if split.side(&ds, i) == Some(Side::Eval) {
                    let s = logit_of_row(m, &ds, i);
                    let l = ds.label(i, 7);
                    scores.push(s);
                    labels.push(l);
                    base_counts.add(ds.rows[i].baseline, l);
                    at_t.add(s >= logit(m.threshold), l);
                }
            }
        }
        assert_eq!(pooled.rows as usize, scores.len());
        assert_eq!(pooled.rows, ds.rows.iter().filter(|r| r.day >= 110).count() as u64, "each day once");
        assert_eq!(pooled.drives as usize, ds.drives.len());
        assert_eq!(pooled.positives as usize, labels.iter().filter(|l| **l).count());
        assert_eq!(pooled.baseline, base_counts);
        assert_eq!(pooled.at_threshold, at_t);
        assert_eq!(pooled.auc, auc(&scores, &labels));
        assert_eq!(pooled.model_at_baseline_fpr, tpr_at_fpr(&scores, &labels, base_counts.fpr()));
        assert_eq!(pooled.model_at_1pct, tpr_at_fpr(&scores, &labels, 0.01));
        assert_eq!(pooled.model_at_01pct, tpr_at_fpr(&scores, &labels, 0.001));
        assert!(pooled.positives > 0 && pooled.auc.expect("auc") > 0.5, "{}", pooled.line());

        // One pair pooled is the plain evaluation.
        let one = evaluate(&ds, &splits[1], &models[1]).expect("one");
        let alone = evaluate_pooled(&ds, &[(&splits[1], &models[1])]).expect("alone");
        assert_eq!(one.line(), alone.line());
        assert_eq!((one.rows, one.baseline, one.auc), (alone.rows, alone.baseline, alone.auc));

        // A drive-day held out twice, models of different horizons, nothing: refused.
        let e = evaluate_pooled(&ds, &[parts[0], parts[0]]).expect_err("overlap");
        assert!(e.contains("held out twice"), "{e}");
        let mut m30 = models[1].clone();
        m30.horizon_days = 30;
        let e = evaluate_pooled(&ds, &[parts[0], (&splits[1], &m30)]).expect_err("horizons");
        assert!(e.contains("7d and 30d"), "{e}");
        assert!(evaluate_pooled(&ds, &[]).is_err());
    }
}
