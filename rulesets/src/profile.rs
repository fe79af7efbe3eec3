//! A structural check of disk scoring profile files (the format `checkers::scoring::Profile` parses, see
//! `checkers/README.md` "Scoring profiles"), for the master's catalog: the profile types and their reading
//! names stay in `checkers` (the scorer is agent code), so this checks what can be checked without them:
//! valid TOML, `version = 1`, a `name` of `A-Z a-z 0-9 - _`, `[grades]` with `0 < warning < error < fatal`,
//! and 1..=[`MAX_ITEMS`] `[[item]]` tables each with a string `id` and `reading` and numeric `threshold`
//! and `points`. The agent's parser (which also knows the reading names) runs again before use.

/// Most items in one profile (the same limit as `checkers::scoring::MAX_ITEMS`).
pub const MAX_ITEMS: usize = 512;

/// Why a profile file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("profile {source_name}: {msg}")]
pub struct ProfileError {
    pub source_name: String,
    pub msg: String,
}

fn number(v: Option<&toml::Value>) -> Option<f64> {
    match v? {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Check one profile file; returns its `name`.
pub fn check(text: &str, source_name: &str) -> Result<String, ProfileError> {
    let bad = |msg: String| ProfileError { source_name: source_name.to_string(), msg };
    let t: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    match t.get("version") {
        Some(toml::Value::Integer(1)) => {}
        v => return Err(bad(format!("version {v:?} is not supported (expected 1)"))),
    }
    let name = match t.get("name") {
        Some(toml::Value::String(s))
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            s.clone()
        }
        v => return Err(bad(format!("name {v:?} must be 1+ characters of A-Z a-z 0-9 - _"))),
    };
    let grades =
        t.get("grades").and_then(toml::Value::as_table).ok_or_else(|| bad("no [grades] table".into()))?;
    let (w, e, f) = (number(grades.get("warning")), number(grades.get("error")), number(grades.get("fatal")));
    match (w, e, f) {
        (Some(w), Some(e), Some(f)) if w > 0.0 && w < e && e < f && f.is_finite() => {}
        _ => {
            return Err(bad(format!(
                "grades must satisfy 0 < warning < error < fatal (got {w:?} / {e:?} / {f:?})"
            )));
        }
    }
    let items =
        t.get("item").and_then(toml::Value::as_array).ok_or_else(|| bad("no [[item]] tables".into()))?;
    if items.is_empty() || items.len() > MAX_ITEMS {
        return Err(bad(format!("needs 1..={MAX_ITEMS} items, has {}", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        let item = item.as_table().ok_or_else(|| bad(format!("item {i} is not a table")))?;
        for key in ["id", "reading"] {
            if !matches!(item.get(key), Some(toml::Value::String(s)) if !s.is_empty()) {
                return Err(bad(format!("item {i}: `{key}` must be a non-empty string")));
            }
        }
        for key in ["threshold", "points"] {
            if !number(item.get(key)).is_some_and(f64::is_finite) {
                return Err(bad(format!("item {i}: `{key}` must be a finite number")));
            }
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version = 1\nname = \"p\"\n[grades]\nwarning = 1\nerror = 2\nfatal = 3\n\
                        [[item]]\nid = \"a\"\nreading = \"smart.pending\"\nthreshold = 1\npoints = 10\n";

    #[test]
    fn good_and_bad_profiles() {
        assert_eq!(check(GOOD, "t"), Ok("p".to_string()));
        for (bad, why) in [
            ("version = 1\nname = ", "TOML"),
            (&GOOD.replace("version = 1", "version = 2"), "version"),
            (&GOOD.replace("name = \"p\"", "name = \"p q\""), "name"),
            (&GOOD.replace("error = 2", "error = 0.5"), "grades"),
            (&GOOD.replace("threshold = 1", "threshold = \"x\""), "threshold"),
            (&GOOD.replace("id = \"a\"\n", ""), "id"),
            (&GOOD[..GOOD.find("[[item]]").expect("item")], "item"),
        ] {
            assert!(check(bad, "t").is_err(), "{why}: {bad}");
        }
    }
}
