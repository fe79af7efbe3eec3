//! Disk-failure prediction (issue 20): the contract shared by the trainer (`huatuo predict train|eval`),
//! the agent's disk checker (it scores each disk on the host from the SMART history in its KV) and the
//! master's catalog (it validates `model` artifacts with [`Model::from_json`] before accepting them).
//!
//! The model is a logistic regression over standardised features of one disk's daily SMART history:
//! `p = sigmoid(bias + sum_i w_i * (x_i - mean_i) / scale_i)`. It is chosen because it is small (a few hundred
//! bytes of JSON), scores in microseconds with no dependency, and explains itself: each feature's term
//! `w_i * z_i` is its contribution, and the largest ones are the evidence a WARNING carries.
//!
//! Pure: no IO, no clock, no tokio. Time is a day number (days since 1970-01-01, UTC).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The model file format this code reads; a different one is refused.
pub const MODEL_FORMAT: u32 = 1;
/// Largest model file accepted (issue 20's floor: the artifact stays under 1 MiB).
pub const MAX_MODEL_BYTES: usize = 1 << 20;
/// Most features one model may use: far more than a SMART model needs, small enough to score in microseconds.
pub const MAX_FEATURES: usize = 256;
/// Days of history kept per disk (on the agent, in the trainer's per-drive window): the longest feature
/// window (30 days) plus room for gaps.
pub const MAX_HISTORY_DAYS: usize = 60;
/// Longest model name or disk model string taken.
pub const MAX_NAME_LEN: usize = 128;
/// A raw SMART value above this is absurd (a counter of 2^53 events); it is refused, not scored.
pub const MAX_RAW: f64 = 9_007_199_254_740_992.0;

/// SMART attributes the predictor knows, by id (Backblaze names the columns `smart_N_raw`; the agent's disk
/// finding carries the same names as readings). 1 read error rate, 5 reallocated sectors, 9 power-on hours,
/// 187 reported uncorrectable, 188 command timeouts, 194 temperature, 197 pending sectors, 198 offline
/// uncorrectable, 199 UDMA CRC errors.
pub const ATTRIBUTES: [u16; 9] = [1, 5, 9, 187, 188, 194, 197, 198, 199];

/// The reading / column name of a SMART attribute's raw value: `smart_5_raw`.
pub fn raw_column(attr: u16) -> String {
    format!("smart_{attr}_raw")
}

/// Why input is refused. Every variant is a clear message; nothing panics on bad input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("model file is {0} bytes, over the {MAX_MODEL_BYTES}-byte limit")]
    ModelTooBig(usize),
    #[error("model file does not parse: {0}")]
    ModelParse(String),
    #[error("model format {0} is not supported (this build reads format {MODEL_FORMAT})")]
    ModelFormat(u32),
    #[error("model is invalid: {0}")]
    ModelInvalid(String),
    #[error("history is invalid: {0}")]
    History(String),
}

/// One day's SMART raw values of a disk. Absent attributes are simply not in the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaySample {
    /// Days since 1970-01-01 (UTC).
    pub day: u32,
    /// Attribute id -> raw value (finite, 0 ..= [`MAX_RAW`]).
    pub raw: BTreeMap<u16, f64>,
}

/// A disk's daily SMART history, oldest first, at most one sample per day, at most [`MAX_HISTORY_DAYS`]
/// days back from the newest (older samples are dropped as newer ones arrive).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskHistory {
    /// The disk's model string (`ST8000DM002`), empty when unknown.
    pub model: String,
    pub days: Vec<DaySample>,
}

impl DiskHistory {
    pub fn new(model: &str) -> Self {
        DiskHistory { model: model.chars().take(MAX_NAME_LEN).collect(), days: Vec::new() }
    }

    /// Record one day's values. A sample for the newest day replaces it (the last reading of a day wins);
    /// an older day than the newest is refused (history only moves forward); a non-finite, negative or absurd
    /// value is refused. Samples older than [`MAX_HISTORY_DAYS`] before the new one are dropped.
    pub fn push(&mut self, sample: DaySample) -> Result<(), Error> {
        for (attr, v) in &sample.raw {
            if !v.is_finite() || *v < 0.0 || *v > MAX_RAW {
                return Err(Error::History(format!("smart {attr} raw value {v} is not a count")));
            }
        }
        match self.days.last() {
            Some(last) if last.day == sample.day => {
                let n = self.days.len();
                self.days[n - 1] = sample;
            }
            Some(last) if last.day > sample.day => {
                return Err(Error::History(format!(
                    "day {} is older than the newest recorded day {}",
                    sample.day, last.day
                )));
            }
            _ => self.days.push(sample),
        }
        let newest = self.days.last().map_or(0, |s| s.day);
        let keep_from = newest.saturating_sub(MAX_HISTORY_DAYS as u32 - 1);
        self.days.retain(|s| s.day >= keep_from);
        Ok(())
    }

    /// Days covered, newest minus oldest plus one (0 when empty).
    pub fn span_days(&self) -> u32 {
        match (self.days.first(), self.days.last()) {
            (Some(a), Some(b)) => b.day - a.day + 1,
            _ => 0,
        }
    }

    fn latest(&self, attr: u16) -> Option<f64> {
        self.days.last().and_then(|s| s.raw.get(&attr).copied())
    }

    /// The value of `attr` on the newest sample at least `days` before the newest day, or failing that the
    /// oldest sample that has it (a history shorter than the window gives the delta over what there is).
    fn at_or_before(&self, attr: u16, days: u32) -> Option<f64> {
        let newest = self.days.last()?.day;
        let target = newest.saturating_sub(days);
        let older = self.days.iter().rev().find(|s| s.day <= target).and_then(|s| s.raw.get(&attr).copied());
        older.or_else(|| self.days.iter().find_map(|s| s.raw.get(&attr).copied()))
    }
}

/// One input of the model, computed from a [`DiskHistory`]. `value` is `None` when the history does not
/// have the attribute; the model then uses the feature's training mean (its standardised value is 0, so it
/// contributes nothing), which is how the 2013 data's empty columns are handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Feature {
    /// `ln(1 + raw)` of the newest day.
    Raw { attr: u16 },
    /// `ln(1 + max(0, newest - value `days` before))`: how much a counter grew over the window.
    Delta { attr: u16, days: u32 },
    /// 1 when the newest raw value is above 0, else 0.
    NonZero { attr: u16 },
    /// 1 when the disk's model is this one, else 0.
    ModelIs { model: String },
}

impl Feature {
    /// A stable, readable name: `raw_5`, `delta_197_7d`, `nonzero_187`, `model=ST8000DM002`.
    pub fn name(&self) -> String {
        match self {
            Feature::Raw { attr } => format!("raw_{attr}"),
            Feature::Delta { attr, days } => format!("delta_{attr}_{days}d"),
            Feature::NonZero { attr } => format!("nonzero_{attr}"),
            Feature::ModelIs { model } => format!("model={model}"),
        }
    }

    pub fn value(&self, h: &DiskHistory) -> Option<f64> {
        match self {
            Feature::Raw { attr } => h.latest(*attr).map(f64::ln_1p),
            Feature::Delta { attr, days } => {
                let now = h.latest(*attr)?;
                let then = h.at_or_before(*attr, *days)?;
                Some((now - then).max(0.0).ln_1p())
            }
            Feature::NonZero { attr } => h.latest(*attr).map(|v| if v > 0.0 { 1.0 } else { 0.0 }),
            Feature::ModelIs { model } => Some(if h.model == *model { 1.0 } else { 0.0 }),
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Feature::Raw { attr } | Feature::NonZero { attr } if *attr == 0 || *attr > 255 => {
                Err(format!("feature {}: SMART attribute ids are 1..=255", self.name()))
            }
            Feature::Delta { attr, days } if *attr == 0 || *attr > 255 || *days == 0 => {
                Err(format!("feature {}: attribute 1..=255 and a window of at least one day", self.name()))
            }
            Feature::Delta { days, .. } if *days as usize >= MAX_HISTORY_DAYS => Err(format!(
                "feature {}: window over the {MAX_HISTORY_DAYS} days of history kept",
                self.name()
            )),
            Feature::ModelIs { model } if model.is_empty() || model.len() > MAX_NAME_LEN => {
                Err(format!("feature {}: model string of 1..={MAX_NAME_LEN} bytes", self.name()))
            }
            _ => Ok(()),
        }
    }
}

/// What the model was trained on, for people reading the file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainInfo {
    /// Where the rows came from (file names), free text.
    #[serde(default)]
    pub source: String,
    /// First and last day of the training rows (days since 1970-01-01).
    #[serde(default)]
    pub from_day: u32,
    #[serde(default)]
    pub to_day: u32,
    /// Training rows (drive-days) and how many were positive (failed within the horizon).
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub positives: u64,
}

/// A trained model: the JSON file that is the catalog artifact of type `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// [`MODEL_FORMAT`].
    pub format: u32,
    /// The artifact's name (`disk-failure`), free text for people.
    pub name: String,
    /// What "failure" means for this model: failing within this many days of the scored day.
    pub horizon_days: u32,
    /// A disk whose history spans fewer days gets no prediction, not a guess.
    pub min_history_days: u32,
    pub features: Vec<Feature>,
    /// Per feature: training mean and scale (standard deviation, > 0) used to standardise it.
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
    /// Per feature: the weight of its standardised value.
    pub weights: Vec<f64>,
    pub bias: f64,
    /// Probability at or above which the agent reports the disk WARNING with cause `predicted-failure`.
    pub threshold: f64,
    #[serde(default)]
    pub trained: TrainInfo,
}

/// One feature's part in a prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub feature: String,
    /// The feature's value (before standardising); `None` when the history lacked the attribute.
    pub value: Option<f64>,
    /// `w * z`: how much it moved the log-odds.
    pub contribution: f64,
}

/// The model's answer for one disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Probability of failing within `horizon_days`, 0..=1.
    pub probability: f64,
    /// The features that raised the log-odds most, largest first (at most [`TOP_FEATURES`]).
    pub top: Vec<Contribution>,
}

/// Features listed as a prediction's evidence.
pub const TOP_FEATURES: usize = 3;

/// Why a disk gets no prediction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoPrediction {
    #[error("too little history: {have} days, the model needs {need}")]
    TooLittleHistory { have: u32, need: u32 },
}

impl Model {
    /// Parse and check a model file. Everything about it is checked here, once: size, format, the lengths of
    /// the per-feature vectors, finite numbers, positive scales, a threshold strictly between 0 and 1, valid
    /// and unique features.
    pub fn from_json(bytes: &[u8]) -> Result<Model, Error> {
        if bytes.len() > MAX_MODEL_BYTES {
            return Err(Error::ModelTooBig(bytes.len()));
        }
        // Read the format first so a newer file says so instead of failing on a field it adds.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| Error::ModelParse(e.to_string()))?;
        if head.format != MODEL_FORMAT {
            return Err(Error::ModelFormat(head.format));
        }
        let m: Model = serde_json::from_slice(bytes).map_err(|e| Error::ModelParse(e.to_string()))?;
        m.validate().map_err(Error::ModelInvalid)?;
        Ok(m)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The checks of [`Model::from_json`] on a model built in memory (the trainer calls it before writing).
    pub fn validate(&self) -> Result<(), String> {
        let n = self.features.len();
        if n == 0 || n > MAX_FEATURES {
            return Err(format!("{n} features; 1..={MAX_FEATURES} wanted"));
        }
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(format!("name of 1..={MAX_NAME_LEN} bytes wanted"));
        }
        for (what, v) in [("mean", &self.mean), ("scale", &self.scale), ("weights", &self.weights)] {
            if v.len() != n {
                return Err(format!("{what} has {} values for {n} features", v.len()));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(format!("{what} holds {x}, not a finite number"));
            }
        }
        if let Some(s) = self.scale.iter().find(|s| **s <= 0.0) {
            return Err(format!("scale {s} is not positive"));
        }
        if !self.bias.is_finite() {
            return Err("bias is not a finite number".into());
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(format!("threshold {} is not strictly between 0 and 1", self.threshold));
        }
        if self.horizon_days == 0 || self.horizon_days > 365 {
            return Err(format!("horizon of {} days; 1..=365 wanted", self.horizon_days));
        }
        if self.min_history_days == 0 || self.min_history_days as usize > MAX_HISTORY_DAYS {
            return Err(format!("min_history_days {}; 1..={MAX_HISTORY_DAYS} wanted", self.min_history_days));
        }
        let mut names = std::collections::BTreeSet::new();
        for f in &self.features {
            f.check()?;
            if !names.insert(f.name()) {
                return Err(format!("feature {} appears twice", f.name()));
            }
        }
        Ok(())
    }

    /// The log-odds and each feature's term, for a history with enough days.
    fn terms(&self, h: &DiskHistory) -> (f64, Vec<Contribution>) {
        let mut logit = self.bias;
        let mut terms = Vec::with_capacity(self.features.len());
        for (i, f) in self.features.iter().enumerate() {
            let value = f.value(h);
            let z = value.map_or(0.0, |x| (x - self.mean[i]) / self.scale[i]);
            let c = self.weights[i] * z;
            logit += c;
            terms.push(Contribution { feature: f.name(), value, contribution: c });
        }
        (logit, terms)
    }

    /// Score one disk. A history spanning fewer than `min_history_days` days gets no prediction.
    pub fn score(&self, h: &DiskHistory) -> Result<Prediction, NoPrediction> {
        let have = h.span_days();
        if have < self.min_history_days || h.days.is_empty() {
            return Err(NoPrediction::TooLittleHistory { have, need: self.min_history_days });
        }
        let (logit, mut terms) = self.terms(h);
        terms.retain(|t| t.contribution > 0.0);
        terms.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        terms.truncate(TOP_FEATURES);
        Ok(Prediction { probability: sigmoid(logit), top: terms })
    }
}

/// The logistic function, stable for large |x|.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model {
            format: MODEL_FORMAT,
            name: "disk-failure".into(),
            horizon_days: 30,
            min_history_days: 2,
            features: vec![Feature::Raw { attr: 5 }, Feature::Delta { attr: 197, days: 7 }],
            mean: vec![0.1, 0.0],
            scale: vec![1.0, 0.5],
            weights: vec![1.5, 2.0],
            bias: -5.0,
            threshold: 0.5,
            trained: TrainInfo::default(),
        }
    }

    fn day(day: u32, kv: &[(u16, f64)]) -> DaySample {
        DaySample { day, raw: kv.iter().copied().collect() }
    }

    #[test]
    fn a_model_round_trips_and_scores_with_its_evidence() {
        let m = Model::from_json(model().to_json().as_bytes()).expect("valid");
        let mut h = DiskHistory::new("ST8000DM002");
        h.push(day(100, &[(5, 0.0), (197, 0.0)])).expect("push");
        assert_eq!(m.score(&h), Err(NoPrediction::TooLittleHistory { have: 1, need: 2 }));
        h.push(day(108, &[(5, 40.0), (197, 16.0)])).expect("push");
        let p = m.score(&h).expect("enough history");
        assert!(p.probability > 0.9, "{p:?}");
        assert_eq!(p.top[0].feature, "delta_197_7d");
        assert_eq!(p.top.len(), 2);
        let mut healthy = DiskHistory::new("x");
        healthy.push(day(100, &[(5, 0.0)])).expect("push");
        healthy.push(day(130, &[(5, 0.0)])).expect("push");
        assert!(m.score(&healthy).expect("enough").probability < 0.01);
    }

    #[test]
    fn bad_model_files_are_clear_errors() {
        assert!(matches!(Model::from_json(b"{"), Err(Error::ModelParse(_))));
        assert!(matches!(Model::from_json(&vec![b' '; MAX_MODEL_BYTES + 1]), Err(Error::ModelTooBig(_))));
        let mut m = model();
        m.format = 2;
        assert_eq!(Model::from_json(m.to_json().as_bytes()), Err(Error::ModelFormat(2)));
        for broken in [
            r#""weights": [1.5]"#.to_string(),
            r#""scale": [1.0, 0.0]"#.to_string(),
            r#""threshold": 1.0"#.to_string(),
            r#""features": [{"kind":"raw","attr":5},{"kind":"raw","attr":5}]"#.to_string(),
        ] {
            let (k, _) = broken.split_once(':').expect("pair");
            let mut v: serde_json::Value = serde_json::from_str(&model().to_json()).expect("json");
            let patch: serde_json::Value = serde_json::from_str(&format!("{{{broken}}}")).expect("patch");
            v[k.trim_matches('"')] = patch[k.trim_matches('"')].clone();
            let e = Model::from_json(v.to_string().as_bytes());
            assert!(matches!(e, Err(Error::ModelInvalid(_))), "{broken}: {e:?}");
        }
        // NaN cannot be written in JSON; a weight that overflows to infinity is refused.
        let e = Model::from_json(model().to_json().replace("1.5", "1e999").as_bytes());
        assert!(e.is_err(), "{e:?}");
    }

    #[test]
    fn history_refuses_absurd_values_and_going_back() {
        let mut h = DiskHistory::new("m");
        assert!(h.push(day(10, &[(5, -1.0)])).is_err());
        assert!(h.push(day(10, &[(5, f64::NAN)])).is_err());
        assert!(h.push(day(10, &[(5, 1e300)])).is_err());
        assert!(h.days.is_empty(), "a refused sample changes nothing");
        h.push(day(10, &[(5, 1.0)])).expect("push");
        h.push(day(10, &[(5, 2.0)])).expect("same day replaces");
        assert_eq!(h.days.len(), 1);
        assert!(h.push(day(9, &[(5, 1.0)])).is_err());
        for d in 11..200 {
            h.push(day(d, &[(5, 1.0)])).expect("push");
        }
        assert_eq!(h.days.len(), MAX_HISTORY_DAYS);
        assert_eq!(h.span_days() as usize, MAX_HISTORY_DAYS);
    }
}
