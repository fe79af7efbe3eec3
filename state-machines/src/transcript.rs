//! Transcripts: line-oriented test scripts of inputs and the states, transitions, effects and errors expected
//! after each (format in the crate README). [`parse`] turns text into a [`Transcript`] (a malformed file is a
//! [`ParseError`] with its line number); [`run`] replays it through [`step`](crate::step::step), checks every
//! expectation and every invariant, and stops at the first [`Divergence`]. Shared by the crate's tests and
//! `huatuo fsm check`.

use std::collections::{BTreeMap, BTreeSet};

use crate::finding::{Finding, Severity};
use crate::id::{Kind, ObjectId};
use crate::invariants;
use crate::model::{
    AckKind, Action, FixAction, Input, ObjectState, OperatorCommand, Outcome, Policy, StepError, TicketUpdate,
};
use crate::step::step;
use crate::table::State;

/// Largest transcript accepted (a transcript is hand-written; anything bigger is a mistake or hostile).
pub const MAX_TRANSCRIPT_BYTES: usize = 4 << 20;
/// Longest line accepted.
pub const MAX_LINE_LEN: usize = 8192;

/// A malformed transcript. `line` is 1-based (0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// The first place where the machines did not do what the transcript expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct Divergence {
    pub line: usize,
    pub message: String,
}

/// An expectation about the most recent input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    State(State),
    Transition {
        from: State,
        to: State,
        cause: Option<String>,
    },
    NoTransition,
    /// One effect summary ([`Effect::summary`](crate::model::Effect::summary)); the effect lines after an
    /// input together must equal the effects exactly, in order.
    Effect(String),
    NoEffects,
    /// The input must fail with this [`StepError::code`].
    Error(String),
}

/// One meaningful line.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Start over with a fresh GOOD object at time 0.
    Object(ObjectId),
    /// The policy from here on (after a `policy KEY VALUE` override).
    Policy(Box<Policy>),
    /// Put the object in a state (set-up, no transition).
    Start {
        state: State,
        at: u64,
    },
    /// Set an attribute (set-up).
    Attr {
        key: String,
        value: String,
    },
    /// Apply an input at a time.
    Step {
        at: u64,
        input: Box<Input>,
    },
    Expect(Expect),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// `(line number, item)`, in file order.
    pub items: Vec<(usize, Item)>,
}

/// What a matching run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub steps: usize,
    pub expectations: usize,
    /// Every edge taken, per kind (for coverage).
    pub edges: BTreeSet<(Kind, State, State)>,
}

fn perr(line: usize, message: impl Into<String>) -> ParseError {
    ParseError { line, message: message.into() }
}

fn parse_num(line: usize, s: &str, what: &str) -> Result<u64, ParseError> {
    s.parse().map_err(|_| perr(line, format!("{what}: expected a number of milliseconds, got {s:?}")))
}

fn parse_state(line: usize, s: &str) -> Result<State, ParseError> {
    s.parse().map_err(|e| perr(line, format!("{e}")))
}

fn parse_action(line: usize, s: &str) -> Result<Action, ParseError> {
    Ok(match s {
        "provision" => Action::Provision,
        "test" => Action::Test,
        "fix:reboot" => Action::Fix { fix: FixAction::Reboot },
        "fix:clean-fs" => Action::Fix { fix: FixAction::CleanFs },
        "fix:restart-service" => Action::Fix { fix: FixAction::RestartService },
        other => {
            return Err(perr(
                line,
                format!(
                    "unknown action {other:?} (provision, test, fix:reboot, fix:clean-fs, fix:restart-service)"
                ),
            ));
        }
    })
}

fn parse_ack(line: usize, s: &str) -> Result<AckKind, ParseError> {
    match s {
        "drained" => Ok(AckKind::Drained),
        "data-evacuated" => Ok(AckKind::DataEvacuated),
        other => Err(perr(line, format!("unknown ack {other:?} (drained, data-evacuated)"))),
    }
}

fn parse_ticket_update(line: usize, s: &str) -> Result<TicketUpdate, ParseError> {
    Ok(match s {
        "filed" => TicketUpdate::Filed,
        "accepted" => TicketUpdate::Accepted,
        "part-replaced" => TicketUpdate::PartReplaced,
        "closed" => TicketUpdate::Closed,
        other => {
            return Err(perr(
                line,
                format!("unknown ticket update {other:?} (filed, accepted, part-replaced, closed)"),
            ));
        }
    })
}

/// Everything after the first `n` whitespace-separated words of `text`, trimmed.
fn rest_after(text: &str, n: usize) -> &str {
    let mut rest = text.trim_start();
    for _ in 0..n {
        match rest.find(char::is_whitespace) {
            Some(i) => rest = rest[i..].trim_start(),
            None => return "",
        }
    }
    rest.trim_end()
}

/// Override one policy field by name (through serde, so every field of [`Policy`] works and unknown names
/// are refused). `fix_by_rule` takes `RULE=ACTION` and adds one entry.
fn set_policy(line: usize, policy: &Policy, key: &str, value: &str) -> Result<Policy, ParseError> {
    let mut v = serde_json::to_value(policy).map_err(|e| perr(line, e.to_string()))?;
    let obj = v.as_object_mut().ok_or_else(|| perr(line, "policy is not an object"))?;
    if !obj.contains_key(key) {
        return Err(perr(line, format!("unknown policy field {key:?}")));
    }
    if key == "fix_by_rule" {
        let (rule, action) =
            value.split_once('=').ok_or_else(|| perr(line, "fix_by_rule takes RULE=ACTION"))?;
        let map =
            obj.get_mut(key).and_then(|m| m.as_object_mut()).ok_or_else(|| perr(line, "bad fix_by_rule"))?;
        map.insert(rule.to_string(), serde_json::Value::String(action.to_string()));
    } else if let Ok(n) = value.parse::<u64>() {
        obj.insert(key.to_string(), n.into());
    } else {
        obj.insert(key.to_string(), serde_json::Value::String(value.to_string()));
    }
    let p: Policy = serde_json::from_value(v).map_err(|e| perr(line, format!("policy {key}: {e}")))?;
    p.validate().map_err(|e| perr(line, e.to_string()))?;
    Ok(p)
}

/// Parse transcript text. Never panics; any malformed line is a [`ParseError`] naming it.
pub fn parse(text: &str) -> Result<Transcript, ParseError> {
    if text.len() > MAX_TRANSCRIPT_BYTES {
        return Err(perr(0, format!("transcript larger than {MAX_TRANSCRIPT_BYTES} bytes")));
    }
    let mut items = Vec::new();
    let mut policy = Policy::default();
    let mut object: Option<ObjectId> = None;
    let mut last_time = 0u64;
    let mut have_step = false;
    for (i, raw) in text.lines().enumerate() {
        let ln = i + 1;
        if raw.len() > MAX_LINE_LEN {
            return Err(perr(ln, format!("line longer than {MAX_LINE_LEN} bytes")));
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let need = |n: usize, usage: &str| {
            if w.len() < n { Err(perr(ln, format!("too few words; usage: {usage}"))) } else { Ok(()) }
        };
        let item = match w[0] {
            "object" => {
                need(2, "object KIND/HOST[/NAME]")?;
                let id: ObjectId = w[1].parse().map_err(|e| perr(ln, format!("{e}")))?;
                object = Some(id.clone());
                last_time = 0;
                have_step = false;
                Item::Object(id)
            }
            "policy" => {
                need(3, "policy FIELD VALUE")?;
                policy = set_policy(ln, &policy, w[1], w[2])?;
                Item::Policy(Box::new(policy.clone()))
            }
            "start" => {
                need(2, "start STATE [at MS]")?;
                let id = object.as_ref().ok_or_else(|| perr(ln, "start before any object line"))?;
                let state = parse_state(ln, w[1])?;
                let at = match w.get(2..) {
                    Some([]) | None => last_time,
                    Some(["at", t]) => parse_num(ln, t, "start time")?,
                    _ => return Err(perr(ln, "usage: start STATE [at MS]")),
                };
                ObjectState::in_state(id.clone(), state, at, &policy).map_err(|e| perr(ln, e.to_string()))?;
                last_time = at;
                have_step = false;
                Item::Start { state, at }
            }
            "attr" => {
                need(3, "attr KEY VALUE")?;
                if object.is_none() {
                    return Err(perr(ln, "attr before any object line"));
                }
                Item::Attr { key: w[1].to_string(), value: rest_after(line, 2).to_string() }
            }
            "at" => {
                need(3, "at MS INPUT ...")?;
                let id = object.as_ref().ok_or_else(|| perr(ln, "input before any object line"))?;
                let at = parse_num(ln, w[1], "time")?;
                if at < last_time {
                    return Err(perr(ln, format!("time goes backwards ({at} < {last_time})")));
                }
                last_time = at;
                have_step = true;
                let input = parse_input(ln, id, at, line, &w[2..])?;
                Item::Step { at, input: Box::new(input) }
            }
            "expect" => {
                need(2, "expect state|transition|no-transition|effect|no-effects|error ...")?;
                if !have_step {
                    return Err(perr(ln, "expect before any input of this object"));
                }
                Item::Expect(parse_expect(ln, line, &w[1..])?)
            }
            other => return Err(perr(ln, format!("unknown directive {other:?}"))),
        };
        items.push((ln, item));
    }
    Ok(Transcript { items })
}

fn parse_input(ln: usize, id: &ObjectId, at: u64, line: &str, w: &[&str]) -> Result<Input, ParseError> {
    let need = |n: usize, usage: &str| {
        if w.len() < n { Err(perr(ln, format!("too few words; usage: at MS {usage}"))) } else { Ok(()) }
    };
    Ok(match w[0] {
        "finding" => {
            // finding [about ID] SEVERITY CHECKER VERSION RULE [EVIDENCE...]
            let (object, w, skip) = if w.get(1) == Some(&"about") {
                need(3, "finding about ID ...")?;
                (w[2].parse().map_err(|e| perr(ln, format!("{e}")))?, &w[2..], 9)
            } else {
                (id.clone(), w, 7)
            };
            if w.len() < 5 {
                return Err(perr(
                    ln,
                    "too few words; usage: at MS finding [about ID] SEVERITY CHECKER VERSION RULE [TEXT]",
                ));
            }
            let severity: Severity = w[1].parse().map_err(|e| perr(ln, format!("{e}")))?;
            let evidence = rest_after(line, skip).to_string();
            Input::Finding(Finding {
                object,
                severity,
                checker: w[2].to_string(),
                version: w[3].to_string(),
                rule: w[4].to_string(),
                evidence,
                readings: BTreeMap::new(),
                time_ms: at,
                shadow: false,
            })
        }
        "ack" => {
            need(3, "ack ROLE drained|data-evacuated")?;
            Input::Ack { role: w[1].to_string(), ack: parse_ack(ln, w[2])? }
        }
        "force" => {
            need(4, "force OPERATOR STATE REASON...")?;
            Input::Operator {
                operator: w[1].to_string(),
                command: OperatorCommand::Force {
                    to: parse_state(ln, w[2])?,
                    reason: rest_after(line, 5).to_string(),
                },
            }
        }
        "approve" => {
            need(3, "approve OPERATOR REASON...")?;
            Input::Operator {
                operator: w[1].to_string(),
                command: OperatorCommand::Approve { reason: rest_after(line, 4).to_string() },
            }
        }
        "ticket" => {
            need(3, "ticket ID filed|accepted|part-replaced|closed")?;
            Input::Ticket { ticket: w[1].to_string(), update: parse_ticket_update(ln, w[2])? }
        }
        "result" => {
            need(3, "result ACTION ok|fail [DETAIL...]")?;
            let success = match w[2] {
                "ok" => true,
                "fail" => false,
                other => return Err(perr(ln, format!("result must be ok or fail, got {other:?}"))),
            };
            Input::ActionResult {
                action: parse_action(ln, w[1])?,
                success,
                detail: rest_after(line, 5).to_string(),
            }
        }
        "replacement" => {
            need(2, "replacement SERIAL [KEY=VALUE...]")?;
            let mut attrs = BTreeMap::new();
            for kv in &w[2..] {
                let (k, v) =
                    kv.split_once('=').ok_or_else(|| perr(ln, format!("expected KEY=VALUE, got {kv:?}")))?;
                attrs.insert(k.to_string(), v.to_string());
            }
            Input::Replacement { serial: w[1].to_string(), attrs }
        }
        "tick" => Input::Tick,
        other => {
            return Err(perr(
                ln,
                format!(
                    "unknown input {other:?} (finding, ack, force, approve, ticket, result, replacement, tick)"
                ),
            ));
        }
    })
}

fn parse_expect(ln: usize, line: &str, w: &[&str]) -> Result<Expect, ParseError> {
    Ok(match (w[0], &w[1..]) {
        ("state", [s]) => Expect::State(parse_state(ln, s)?),
        ("transition", [from, "->", to]) => {
            Expect::Transition { from: parse_state(ln, from)?, to: parse_state(ln, to)?, cause: None }
        }
        ("transition", [from, "->", to, "by", cause]) => Expect::Transition {
            from: parse_state(ln, from)?,
            to: parse_state(ln, to)?,
            cause: Some(cause.to_string()),
        },
        ("no-transition", []) => Expect::NoTransition,
        ("effect", [_, ..]) => {
            Expect::Effect(rest_after(line, 2).split_whitespace().collect::<Vec<_>>().join(" "))
        }
        ("no-effects", []) => Expect::NoEffects,
        ("error", [code]) => Expect::Error(code.to_string()),
        _ => {
            return Err(perr(
                ln,
                "usage: expect state S | transition A -> B [by CAUSE] | no-transition | effect SUMMARY | no-effects | \
                 error CODE",
            ));
        }
    })
}

/// The most recent input and what has been checked about it.
struct Last {
    line: usize,
    prev: ObjectState,
    result: Result<Outcome, StepError>,
    error_expected: bool,
    effects: Vec<(usize, String)>,
    no_effects: Option<usize>,
}

fn div(line: usize, message: impl Into<String>) -> Divergence {
    Divergence { line, message: message.into() }
}

/// Checks that can only be made once all expectations of an input are read.
fn finish(last: Option<Last>) -> Result<(), Divergence> {
    let Some(last) = last else { return Ok(()) };
    match &last.result {
        Err(e) if !last.error_expected => {
            Err(div(last.line, format!("unexpected error ({}): {e}", e.code())))
        }
        Err(_) => Ok(()),
        Ok(out) => {
            let got: Vec<String> = out.effects.iter().map(|e| e.summary()).collect();
            if let Some(l) = last.no_effects
                && !got.is_empty()
            {
                return Err(div(l, format!("expected no effects, got [{}]", got.join(", "))));
            }
            if last.effects.is_empty() {
                return Ok(());
            }
            for (i, g) in got.iter().enumerate() {
                match last.effects.get(i) {
                    Some((_, want)) if want == g => {}
                    Some((l, want)) => return Err(div(*l, format!("expected effect {want:?}, got {g:?}"))),
                    None => {
                        return Err(div(
                            last.line,
                            format!("unexpected extra effect {g:?} (all: [{}])", got.join(", ")),
                        ));
                    }
                }
            }
            if let Some((l, want)) = last.effects.get(got.len()) {
                return Err(div(
                    *l,
                    format!("expected effect {want:?}, but there are only [{}]", got.join(", ")),
                ));
            }
            Ok(())
        }
    }
}

/// Replay a transcript; `Ok` with what it covered if everything matches.
pub fn run(t: &Transcript) -> Result<Report, Divergence> {
    let mut report = Report::default();
    let mut policy = Policy::default();
    let mut obj: Option<ObjectState> = None;
    let mut last: Option<Last> = None;
    for (ln, item) in &t.items {
        let ln = *ln;
        match item {
            Item::Expect(_) => {}
            _ => finish(last.take())?,
        }
        match item {
            Item::Object(id) => obj = Some(ObjectState::new(id.clone(), 0)),
            Item::Policy(p) => policy = (**p).clone(),
            Item::Start { state, at } => {
                let id = obj.as_ref().map(|o| o.id.clone()).ok_or_else(|| div(ln, "no object"))?;
                let attrs = obj.as_ref().map(|o| o.attrs.clone()).unwrap_or_default();
                let mut o =
                    ObjectState::in_state(id, *state, *at, &policy).map_err(|e| div(ln, e.to_string()))?;
                o.attrs = attrs;
                obj = Some(o);
            }
            Item::Attr { key, value } => {
                obj.as_mut().ok_or_else(|| div(ln, "no object"))?.attrs.insert(key.clone(), value.clone());
            }
            Item::Step { at, input } => {
                let prev = obj.clone().ok_or_else(|| div(ln, "no object"))?;
                let result = step(&prev, input, *at, &policy);
                report.steps += 1;
                if let Ok(out) = &result {
                    invariants::check_outcome(&prev, out)
                        .map_err(|v| div(ln, format!("invariant violated: {v}")))?;
                    if let Some(tr) = &out.transition {
                        report.edges.insert((prev.kind(), tr.from, tr.to));
                    }
                    obj = Some(out.next.clone());
                }
                last = Some(Last {
                    line: ln,
                    prev,
                    result,
                    error_expected: false,
                    effects: vec![],
                    no_effects: None,
                });
            }
            Item::Expect(e) => {
                report.expectations += 1;
                let l = last.as_mut().ok_or_else(|| div(ln, "expectation before any input"))?;
                let current = obj.as_ref().map(|o| o.state).unwrap_or(l.prev.state);
                match e {
                    Expect::State(s) if *s != current => {
                        return Err(div(ln, format!("expected state {s}, got {current}")));
                    }
                    Expect::State(_) => {}
                    Expect::Transition { from, to, cause } => {
                        let got = l.result.as_ref().ok().and_then(|o| o.transition.as_ref());
                        let Some(tr) = got else {
                            let why = match &l.result {
                                Err(e) => format!("an error: {e}"),
                                Ok(_) => "no transition".into(),
                            };
                            return Err(div(ln, format!("expected transition {from} -> {to}, got {why}")));
                        };
                        if (tr.from, tr.to) != (*from, *to) {
                            return Err(div(
                                ln,
                                format!("expected transition {from} -> {to}, got {} -> {}", tr.from, tr.to),
                            ));
                        }
                        if let Some(c) = cause
                            && c != tr.cause.name()
                        {
                            return Err(div(ln, format!("expected cause {c}, got {}", tr.cause.name())));
                        }
                    }
                    Expect::NoTransition => {
                        if let Ok(Outcome { transition: Some(tr), .. }) = &l.result {
                            return Err(div(
                                ln,
                                format!("expected no transition, got {} -> {}", tr.from, tr.to),
                            ));
                        }
                    }
                    Expect::Effect(s) => l.effects.push((ln, s.clone())),
                    Expect::NoEffects => l.no_effects = Some(ln),
                    Expect::Error(code) => match &l.result {
                        Err(e) if e.code() == code => l.error_expected = true,
                        Err(e) => {
                            return Err(div(ln, format!("expected error {code}, got {}: {e}", e.code())));
                        }
                        Ok(_) => {
                            return Err(div(ln, format!("expected error {code}, but the input applied")));
                        }
                    },
                }
            }
        }
    }
    finish(last.take())?;
    Ok(report)
}

/// Parse and run in one go (for the CLI): [`CheckError::Malformed`] when the text is not a transcript,
/// [`CheckError::Diverged`] when the machines do not do what it expects.
pub fn check(text: &str) -> Result<Report, CheckError> {
    let t = parse(text).map_err(CheckError::Malformed)?;
    run(&t).map_err(CheckError::Diverged)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("malformed transcript: {0}")]
    Malformed(ParseError),
    #[error("divergence: {0}")]
    Diverged(Divergence),
}
