//! Kernel-log rule files: TOML in, a compiled, validated [`RuleSet`] out.
//!
//! A rule names required keywords (an Aho-Corasick prefilter over every rule's keywords runs first, so a
//! line that contains none of them costs one automaton scan and nothing else), a byte-oriented regex with
//! Unicode off (`regex::bytes`, `(?-u)` semantics: Unicode-mode sets were measured >1000x slower), the kind
//! of object it judges and how to build the object's name from named capture groups, a severity, and an
//! optional count-in-window threshold. Rules carry example lines that are checked when the set is
//! compiled, so a keyword that does not occur in what the pattern matches is a load error, not a silent
//! miss. The format is documented in `checkers/rules/kernel-log/README.md`.
//!
//! Memory: the compiled set holds only the automata; every search cache (the lazy DFA states the regex
//! engines fill while matching) lives in the caller's [`Scratch`], created on a rule's first candidate
//! line. Caches kept inside the regexes grew by 6.2 MiB while the examples were checked at load and stayed
//! for the life of the set (measured 9.42 MiB live heap for the 63 default rules, 3.24 without the example
//! check, 2026-12-02): the agent's idle heap was mostly search caches filled once and never used again.

use std::collections::BTreeMap;
use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use regex_automata::meta::{self, Regex};
use regex_automata::util::captures::Captures;
use regex_automata::util::syntax;
use regex_automata::{Input, PatternSet};
use serde::Deserialize;
use state_machines::{Kind, Severity};

use crate::decode::Decoder;
use crate::object::{Normalize, normalize};

/// The default rule set shipped in the binary.
pub const DEFAULT_RULES: &str = include_str!("../../checkers/rules/kernel-log/default.toml");
/// Name of the embedded default rule file (used in error messages and versions).
pub const DEFAULT_RULES_NAME: &str = "default.toml";

/// Most rules in one set: the RegexSet and the candidate bitmaps grow with it; 4096 is 20x the largest
/// set we benchmark.
pub const MAX_RULES: usize = 4096;
/// Longest pattern accepted: rules are one-line matchers, not programs.
pub const MAX_PATTERN_LEN: usize = 2048;
/// Most keywords per rule (the prefilter automaton stays small).
pub const MAX_KEYWORDS: usize = 16;
/// Largest count of a threshold: the window keeps up to this many times per (rule, object).
pub const MAX_THRESHOLD_COUNT: u32 = 1000;
/// Longest threshold window: 7 days (longer windows outlive the kernel ring buffer anyway).
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// Compiled-size limit per regex and for the set (bytes): large enough for realistic rules, small enough
/// that a hostile rule file cannot eat the agent's memory.
pub const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Largest rule file read from disk.
pub const MAX_RULE_FILE_LEN: u64 = 4 << 20;

/// Why a rule file was rejected. Every variant names the file and, where known, the rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{file}: cannot read: {err}")]
    Io { file: String, err: std::io::Error },
    #[error("{file}: invalid rule file: {err}")]
    Toml { file: String, err: String },
    #[error("{file}: rule {id:?}: {msg}")]
    Invalid { file: String, id: String, msg: String },
    #[error("{file}: rule {id:?}: bad regex: {err}")]
    BadRegex { file: String, id: String, err: String },
    #[error("{file}: duplicate rule id {id:?} (first defined in {first})")]
    Duplicate { file: String, id: String, first: String },
    #[error("{file}: {msg}")]
    File { file: String, msg: String },
    #[error("rule set: {0}")]
    Set(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    version: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "rule", default)]
    rules: Vec<RuleToml>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    id: String,
    #[serde(default)]
    description: String,
    keywords: Vec<String>,
    pattern: String,
    kind: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    normalize: Option<Normalize>,
    #[serde(default)]
    fallback: Option<String>,
    severity: String,
    #[serde(default)]
    machine_severity: Option<String>,
    #[serde(default)]
    threshold: Option<ThresholdToml>,
    #[serde(default)]
    decode: Option<Decoder>,
    #[serde(default)]
    weight: Option<String>,
    #[serde(default)]
    below_threshold: Option<String>,
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    context: bool,
    #[serde(default)]
    cause: Option<String>,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    counter_examples: Vec<String>,
}

/// Longest record type name (`record = "ata"`).
pub const MAX_RECORD_NAME: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdToml {
    count: u32,
    window: String,
}

/// "Fire when `count` matches for one object fall within `window_ms` of log time."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub count: u32,
    pub window_ms: u64,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Group(String),
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub description: String,
    /// Kind of the object this rule judges.
    pub kind: Kind,
    /// Kind used when the object template's groups did not participate (only `machine` is allowed).
    pub fallback: Option<Kind>,
    pub severity: Severity,
    /// If set, every hit also yields a finding on the machine with this severity.
    pub machine_severity: Option<Severity>,
    pub threshold: Option<Threshold>,
    /// Decoder run on the named groups (adds readings such as `cause`, may change the severity).
    pub decode: Option<Decoder>,
    /// Named group holding the number of events the line stands for (`4 CE ...`): thresholds sum it.
    pub weight: Option<String>,
    /// With a threshold: severity of the findings for hits below it (e.g. INFO: recorded, no state
    /// change). Without this, hits below a threshold produce nothing.
    pub below_threshold: Option<Severity>,
    /// Multi-line record type: hits of rules with the same record type on the same key (the object, or
    /// the `rec` group) close together in log time are one finding when the scanner groups records.
    pub record: Option<String>,
    /// A context line (`status: { DRDY ERR }`, a GHES detail line): only ever part of a record; with
    /// record grouping off its hits produce nothing.
    pub context: bool,
    /// A fixed `cause` reading (media, link, controller, timeout, device, unknown) when no decoder sets one.
    pub cause: Option<String>,
    pub normalize: Normalize,
    pub keywords: Vec<String>,
    pub pattern: String,
    template: Vec<Part>,
    /// Compiled (and checked against the examples) when the set is loaded, then dropped; compiled again on
    /// the rule's first candidate line ([`Rule::compiled`]): most rules never see one on a healthy host.
    regex: OnceLock<Regex>,
}

/// What one rule says about one line: the object kind and (for named kinds) its normalised name, plus
/// the named groups that matched, as readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub kind: Kind,
    pub name: Option<String>,
    pub readings: BTreeMap<String, String>,
}

/// A compiled, validated rule set.
#[derive(Debug)]
pub struct RuleSet {
    version: String,
    rules: Vec<Rule>,
    prefilter: AhoCorasick,
    /// Keyword index -> rule index.
    keyword_rule: Vec<u32>,
    set: Regex,
    /// Distinguishes this set from every other one compiled by this process: a [`Scratch`] (whose caches
    /// belong to one set's regexes) made for another set is rebuilt, never used with the wrong regexes.
    id: u64,
}

/// Source of [`RuleSet::id`]s.
static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// The regex dialect of rule patterns: bytes, Unicode off (`(?-u)`), matching any bytes (not only UTF-8).
fn regex_builder(size_limit: usize) -> meta::Builder {
    let mut b = Regex::builder();
    b.syntax(syntax::Config::new().unicode(false).utf8(false)).configure(
        Regex::config()
            .utf8_empty(false)
            .nfa_size_limit(Some(size_limit))
            .onepass_size_limit(Some(size_limit))
            .dfa_size_limit(Some(size_limit))
            .match_kind(regex_automata::MatchKind::LeftmostFirst),
    );
    b
}

/// Parse `10m`, `90s`, `24h`, `2d`, `500ms` into milliseconds.
pub fn parse_window(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn parse_kind(file: &str, id: &str, s: &str) -> Result<Kind, RuleError> {
    let k: Kind = s.parse().map_err(|_| RuleError::Invalid {
        file: file.into(),
        id: id.into(),
        msg: format!("unknown object kind {s:?} (expected machine, disk, dimm or nic)"),
    })?;
    if k == Kind::Checker {
        return Err(RuleError::Invalid {
            file: file.into(),
            id: id.into(),
            msg: "kind \"checker\" is reserved for findings about checkers".into(),
        });
    }
    Ok(k)
}

fn parse_template(s: &str) -> Option<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let close = rest[open..].find('}')? + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        parts.push(Part::Group(name.to_string()));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return None;
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    parts.iter().any(|p| matches!(p, Part::Group(_))).then_some(parts)
}

fn is_version(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

impl Rule {
    fn compile(file: &str, t: RuleToml) -> Result<Rule, RuleError> {
        let id = t.id.clone();
        let bad = |msg: String| RuleError::Invalid { file: file.into(), id: id.clone(), msg };
        let id_ok = !t.id.is_empty()
            && t.id.len() <= 64
            && t.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !id_ok {
            return Err(bad("id must be 1-64 characters of a-z 0-9 . -".into()));
        }
        if t.pattern.is_empty() || t.pattern.len() > MAX_PATTERN_LEN {
            return Err(bad(format!("pattern must be 1-{MAX_PATTERN_LEN} bytes")));
        }
        if t.keywords.is_empty() || t.keywords.len() > MAX_KEYWORDS {
            return Err(bad(format!("keywords: give 1-{MAX_KEYWORDS} literal strings")));
        }
        if let Some(k) = t.keywords.iter().find(|k| k.len() < 3 || k.len() > 256) {
            return Err(bad(format!(
                "keyword {k:?} must be 3-256 bytes (short keywords defeat the prefilter)"
            )));
        }
        let kind = parse_kind(file, &t.id, &t.kind)?;
        let severity: Severity = t.severity.parse().map_err(|e| bad(format!("severity: {e}")))?;
        let machine_severity = match &t.machine_severity {
            Some(s) => Some(s.parse::<Severity>().map_err(|e| bad(format!("machine_severity: {e}")))?),
            None => None,
        };
        let fallback = match &t.fallback {
            Some(s) => match parse_kind(file, &t.id, s)? {
                Kind::Machine => Some(Kind::Machine),
                other => return Err(bad(format!("fallback must be \"machine\", not {other:?}"))),
            },
            None => None,
        };
        let threshold = match &t.threshold {
            Some(th) => {
                let window_ms = parse_window(&th.window)
                    .filter(|w| (1..=MAX_WINDOW_MS).contains(w))
                    .ok_or_else(|| {
                        bad(format!("threshold window {:?}: use e.g. 90s, 10m, 24h (at most 7d)", th.window))
                    })?;
                if !(1..=MAX_THRESHOLD_COUNT).contains(&th.count) {
                    return Err(bad(format!("threshold count must be 1-{MAX_THRESHOLD_COUNT}")));
                }
                Some(Threshold { count: th.count, window_ms })
            }
            None => None,
        };
        let below_threshold = match &t.below_threshold {
            Some(_) if threshold.is_none() => {
                return Err(bad("below_threshold needs a threshold".into()));
            }
            Some(s) => Some(s.parse::<Severity>().map_err(|e| bad(format!("below_threshold: {e}")))?),
            None => None,
        };
        if let Some(r) = &t.record
            && (r.is_empty() || r.len() > MAX_RECORD_NAME || !r.bytes().all(|b| b.is_ascii_lowercase()))
        {
            return Err(bad(format!("record {r:?}: use 1-{MAX_RECORD_NAME} letters a-z")));
        }
        if t.context && t.record.is_none() {
            return Err(bad("context = true needs a record type".into()));
        }
        if let Some(c) = &t.cause
            && !crate::decode::CAUSES.contains(&c.as_str())
        {
            return Err(bad(format!("cause {c:?}: use one of {:?}", crate::decode::CAUSES)));
        }
        let regex = regex_builder(REGEX_SIZE_LIMIT).build(&t.pattern).map_err(|e| RuleError::BadRegex {
            file: file.into(),
            id: t.id.clone(),
            err: e.to_string(),
        })?;
        let template = match (kind, &t.object) {
            (Kind::Machine, None) => Vec::new(),
            (Kind::Machine, Some(_)) => return Err(bad("kind machine takes no object template".into())),
            (_, None) => {
                return Err(bad(format!("kind {kind} needs an object template such as \"{{dev}}\"")));
            }
            (_, Some(o)) => {
                let parts = parse_template(o).ok_or_else(|| {
                    bad(format!("object {o:?}: expected text with {{group}} placeholders, e.g. \"{{dev}}\""))
                })?;
                let names: Vec<&str> = group_names(&regex).collect();
                for p in &parts {
                    if let Part::Group(g) = p
                        && !names.contains(&g.as_str())
                    {
                        return Err(bad(format!(
                            "object uses {{{g}}} but the pattern has no group (?P<{g}>...)"
                        )));
                    }
                }
                parts
            }
        };
        if let Some(w) = &t.weight
            && !group_names(&regex).any(|n| n == w)
        {
            return Err(bad(format!("weight uses group {w:?} but the pattern has no (?P<{w}>...)")));
        }
        let normalize = t.normalize.unwrap_or(match kind {
            Kind::Disk => Normalize::Block,
            Kind::Nic => Normalize::Nic,
            Kind::Dimm => Normalize::Dimm,
            _ => Normalize::None,
        });
        Ok(Rule {
            id: t.id,
            description: t.description,
            kind,
            fallback,
            severity,
            machine_severity,
            threshold,
            decode: t.decode,
            weight: t.weight,
            below_threshold,
            record: t.record,
            context: t.context,
            cause: t.cause,
            normalize,
            keywords: t.keywords,
            pattern: t.pattern,
            template,
            regex: OnceLock::from(regex),
        })
    }

    /// The rule's capture regex, compiled on first use after the set was loaded. `None` only if the
    /// pattern, which compiled with the same limits at load, no longer does (not expected).
    fn compiled(&self) -> Option<&Regex> {
        if let Some(re) = self.regex.get() {
            return Some(re);
        }
        let re = regex_builder(REGEX_SIZE_LIMIT).build(&self.pattern).ok()?;
        Some(self.regex.get_or_init(|| re))
    }

    /// Build the hit for a line this rule matched: the object, or `None` when the object's groups did not
    /// match and there is no fallback (or the name normalises to nothing, e.g. a loop device).
    fn hit(&self, index: usize, msg: &[u8], search: &mut RuleSearch) -> Option<Hit> {
        let re = self.compiled()?;
        let (cache, caps) = search.get_or_insert_with(|| (re.create_cache(), re.create_captures()));
        re.search_captures_with(cache, &Input::new(msg), caps);
        if !caps.is_match() {
            return None;
        }
        let group = |name: &str| caps.get_group_by_name(name).map(|sp| &msg[sp.range()]);
        let mut readings = BTreeMap::new();
        for name in group_names(re) {
            if let Some(m) = group(name) {
                readings.insert(name.to_string(), String::from_utf8_lossy(m).into_owned());
            }
        }
        if self.kind == Kind::Machine {
            return Some(Hit { rule: index, kind: Kind::Machine, name: None, readings });
        }
        // A template with literal text needs every group; a template made only of placeholders lists
        // alternatives (`{dev}{sdev}`) and takes whichever matched.
        let only_groups = self.template.iter().all(|p| matches!(p, Part::Group(_)));
        let mut name = String::new();
        let (mut matched, mut missing) = (0, 0);
        for p in &self.template {
            match p {
                Part::Lit(s) => name.push_str(s),
                Part::Group(g) => match group(g) {
                    Some(m) if !m.is_empty() => {
                        matched += 1;
                        name.push_str(&String::from_utf8_lossy(m))
                    }
                    _ => missing += 1,
                },
            }
        }
        let complete = if only_groups { matched > 0 } else { missing == 0 };
        match (complete, normalize(self.normalize, &name)) {
            (true, Some(n)) => Some(Hit { rule: index, kind: self.kind, name: Some(n), readings }),
            (false, _) if self.fallback == Some(Kind::Machine) => {
                Some(Hit { rule: index, kind: Kind::Machine, name: None, readings })
            }
            _ => None,
        }
    }
}

/// The named capture groups of a one-pattern regex.
fn group_names(re: &Regex) -> impl Iterator<Item = &str> {
    re.group_info().pattern_names(regex_automata::PatternID::ZERO).flatten()
}

/// One rule's search state in a [`Scratch`]: created on the rule's first candidate line.
type RuleSearch = Option<(meta::Cache, Captures)>;

impl RuleSet {
    /// The default rule set embedded in the binary.
    pub fn default_rules() -> Result<RuleSet, RuleError> {
        RuleSet::from_sources(&[(DEFAULT_RULES_NAME.to_string(), DEFAULT_RULES.to_string())])
    }

    /// Every `*.toml` in `dir`, in file-name order.
    pub fn from_dir(dir: &Path) -> Result<RuleSet, RuleError> {
        let shown = dir.display().to_string();
        let entries = std::fs::read_dir(dir).map_err(|err| RuleError::Io { file: shown.clone(), err })?;
        let mut paths = Vec::new();
        for e in entries {
            let p = e.map_err(|err| RuleError::Io { file: shown.clone(), err })?.path();
            if p.extension().is_some_and(|x| x == "toml") {
                paths.push(p);
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(RuleError::File { file: shown, msg: "no *.toml rule files here".into() });
        }
        let mut sources = Vec::new();
        for p in paths {
            let file = p.display().to_string();
            let len = std::fs::metadata(&p).map_err(|err| RuleError::Io { file: file.clone(), err })?.len();
            if len > MAX_RULE_FILE_LEN {
                return Err(RuleError::File { file, msg: format!("larger than {MAX_RULE_FILE_LEN} bytes") });
            }
            let text = std::fs::read_to_string(&p).map_err(|err| RuleError::Io { file, err })?;
            sources.push((p.display().to_string(), text));
        }
        RuleSet::from_sources(&sources)
    }

    /// Compile rule files given as (name, TOML text). The set's version is the files' versions joined by
    /// `+` in the order given.
    pub fn from_sources(sources: &[(String, String)]) -> Result<RuleSet, RuleError> {
        let mut rules: Vec<Rule> = Vec::new();
        let mut examples: Vec<(usize, String, bool)> = Vec::new();
        let mut first_file: BTreeMap<String, String> = BTreeMap::new();
        let mut versions = Vec::new();
        for (file, text) in sources {
            let parsed: FileToml = toml::from_str(text)
                .map_err(|e| RuleError::Toml { file: file.clone(), err: e.to_string() })?;
            let _ = parsed.description;
            if !is_version(&parsed.version) {
                return Err(RuleError::File {
                    file: file.clone(),
                    msg: format!("version {:?}: use 1-64 characters of A-Z a-z 0-9 . -", parsed.version),
                });
            }
            versions.push(parsed.version);
            for t in parsed.rules {
                if let Some(first) = first_file.get(&t.id) {
                    return Err(RuleError::Duplicate { file: file.clone(), id: t.id, first: first.clone() });
                }
                first_file.insert(t.id.clone(), file.clone());
                let ex: Vec<(String, bool)> = t
                    .examples
                    .iter()
                    .map(|e| (e.clone(), true))
                    .chain(t.counter_examples.iter().map(|e| (e.clone(), false)))
                    .collect();
                let rule = Rule::compile(file, t)?;
                for (e, pos) in ex {
                    examples.push((rules.len(), e, pos));
                }
                rules.push(rule);
                if rules.len() > MAX_RULES {
                    return Err(RuleError::Set(format!("more than {MAX_RULES} rules")));
                }
            }
        }
        if rules.is_empty() {
            return Err(RuleError::Set("no rules".into()));
        }
        let mut keywords = Vec::new();
        let mut keyword_rule = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            for k in &r.keywords {
                keywords.push(k.as_bytes());
                keyword_rule.push(i as u32);
            }
        }
        // A contiguous NFA, not a DFA: 64 KiB instead of 1.04 MiB for the 135 keywords of the default set
        // (`AhoCorasick::memory_usage`, 2026-12-02); the prefilter scan stays far above 5,000 lines/s.
        let prefilter = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(&keywords)
            .or_else(|_| AhoCorasick::builder().match_kind(MatchKind::Standard).build(&keywords))
            .map_err(|e| RuleError::Set(format!("keyword automaton: {e}")))?;
        let mut set_builder = regex_builder(REGEX_SIZE_LIMIT * 4);
        set_builder.configure(Regex::config().match_kind(regex_automata::MatchKind::All));
        let set = set_builder
            .build_many(&rules.iter().map(|r| r.pattern.as_str()).collect::<Vec<_>>())
            .map_err(|e| RuleError::Set(format!("regex set: {e}")))?;
        let id = NEXT_SET_ID.fetch_add(1, Ordering::Relaxed);
        let set = RuleSet { version: versions.join("+"), rules, prefilter, keyword_rule, set, id };
        set.check_examples(&examples, &first_file)?;
        // The capture regexes were needed for the checks; a rule compiles its own again on its first line.
        let mut set = set;
        for r in &mut set.rules {
            r.regex = OnceLock::new();
        }
        Ok(set)
    }

    /// Every example must fire its rule (with an object), every counter-example must not.
    fn check_examples(
        &self,
        examples: &[(usize, String, bool)],
        files: &BTreeMap<String, String>,
    ) -> Result<(), RuleError> {
        let mut scratch = self.scratch();
        for (i, text, positive) in examples {
            let rule = &self.rules[*i];
            let mut fired = false;
            self.scan(&mut scratch, text.as_bytes(), |hit| fired |= hit.rule == *i);
            if fired != *positive {
                let file = files.get(&rule.id).cloned().unwrap_or_default();
                let msg = if *positive {
                    format!("example {text:?} does not fire (check keywords, pattern and object groups)")
                } else {
                    format!("counter-example {text:?} fires")
                };
                return Err(RuleError::Invalid { file, id: rule.id.clone(), msg });
            }
        }
        Ok(())
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Matching scratch for one [`RuleSet`] (one per thread or scanner): the candidate marks, and the search
/// caches of the regexes, each created on first use and then reused, so that matching a line allocates
/// nothing once warm; a line that contains no keyword touches only the prefilter. A scratch made for
/// another set is rebuilt on first use with this one.
#[derive(Debug, Clone)]
pub struct Scratch {
    set_id: u64,
    candidate: Vec<bool>,
    set_hits: PatternSet,
    set_cache: Option<meta::Cache>,
    rules: Vec<RuleSearch>,
}

impl RuleSet {
    /// Scratch buffers sized for this set (no search cache yet).
    pub fn scratch(&self) -> Scratch {
        let n = self.rules.len();
        Scratch {
            set_id: self.id,
            candidate: vec![false; n],
            set_hits: PatternSet::new(n),
            set_cache: None,
            rules: vec![None; n],
        }
    }

    /// Mark the candidate rules of `msg` and run the regex set; false if no keyword occurs.
    fn candidates(&self, s: &mut Scratch, msg: &[u8]) -> bool {
        if s.set_id != self.id {
            *s = self.scratch();
        }
        if !self.prefilter.is_match(msg) {
            return false;
        }
        s.candidate.iter_mut().for_each(|c| *c = false);
        for m in self.prefilter.find_overlapping_iter(msg) {
            s.candidate[self.keyword_rule[m.pattern().as_usize()] as usize] = true;
        }
        s.set_hits.clear();
        let cache = s.set_cache.get_or_insert_with(|| self.set.create_cache());
        self.set.which_overlapping_matches_with(cache, &Input::new(msg), &mut s.set_hits);
        !s.set_hits.is_empty()
    }

    /// Whether any rule matches `msg` (no object extraction; used by the benchmark).
    pub fn is_match(&self, s: &mut Scratch, msg: &[u8]) -> bool {
        self.candidates(s, msg) && s.set_hits.iter().any(|p| s.candidate[p.as_usize()])
    }

    /// Call `f` with every hit of every rule on `msg` (in rule order).
    pub fn scan(&self, s: &mut Scratch, msg: &[u8], mut f: impl FnMut(Hit)) {
        if !self.candidates(s, msg) {
            return;
        }
        for i in 0..self.rules.len() {
            if s.candidate[i]
                && s.set_hits.contains(regex_automata::PatternID::must(i))
                && let Some(hit) = self.rules[i].hit(i, msg, &mut s.rules[i])
            {
                f(hit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_rule(keyword: &str, pattern: &str) -> RuleSet {
        let text = format!(
            "version = \"1\"\n[[rule]]\nid = \"disk.x\"\nkeywords = [\"{keyword}\"]\npattern = '{pattern}'\n\
             kind = \"disk\"\nobject = \"{{dev}}\"\nseverity = \"ERROR\"\n"
        );
        RuleSet::from_sources(&[("t.toml".into(), text)]).expect("compiles")
    }

    fn names(set: &RuleSet, s: &mut Scratch, line: &str) -> Vec<String> {
        let mut out = Vec::new();
        set.scan(s, line.as_bytes(), |h| out.push(h.name.unwrap_or_default()));
        out
    }

    #[test]
    fn capture_regexes_are_dropped_after_load_and_compiled_on_a_rules_first_line() {
        let set = RuleSet::default_rules().expect("default rules");
        assert!(set.rules.iter().all(|r| r.regex.get().is_none()), "no capture regex kept after the checks");
        let mut s = set.scratch();
        assert!(s.set_cache.is_none() && s.rules.iter().all(Option::is_none), "a new scratch holds no cache");
        let line = "blk_update_request: I/O error, dev sdb, sector 1234 op 0x0:(READ)";
        let mut hit_rules = Vec::new();
        set.scan(&mut s, line.as_bytes(), |h| hit_rules.push(h.rule));
        assert!(!hit_rules.is_empty(), "the I/O error line fires a rule");
        for i in 0..set.rules.len() {
            let compiled = set.rules[i].regex.get().is_some();
            assert_eq!(compiled, s.rules[i].is_some(), "rule {i}: compiled exactly when searched");
        }
        assert!(hit_rules.iter().all(|&i| set.rules[i].regex.get().is_some()));
        // A benign line with no keyword touches nothing else.
        let compiled = set.rules.iter().filter(|r| r.regex.get().is_some()).count();
        set.scan(&mut s, b"systemd[1]: Started Session 3 of user root.", |_| panic!("no hit"));
        assert_eq!(compiled, set.rules.iter().filter(|r| r.regex.get().is_some()).count());
    }

    #[test]
    fn a_scratch_made_for_another_set_is_rebuilt_not_used_with_the_wrong_regexes() {
        // Same size (one rule each), different patterns and groups: only the set identity tells them apart.
        let a = one_rule("I/O error", r"I/O error, dev (?P<dev>\w+)");
        let b = one_rule("medium error", r"(?P<x>\d+) medium error on (?P<dev>[a-z]+)");
        let mut s = a.scratch();
        assert_eq!(names(&a, &mut s, "I/O error, dev sdc"), ["sdc"]);
        assert_eq!(names(&b, &mut s, "7 medium error on sdd"), ["sdd"]);
        assert_eq!(s.set_id, b.id, "the scratch now belongs to b");
        assert_eq!(names(&a, &mut s, "I/O error, dev sde"), ["sde"]);
        assert_ne!(a.id, b.id);
    }
}
