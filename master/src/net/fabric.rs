//! Which fabric topology the leader localises with (issue 16), and the one parser every source goes
//! through. Precedence: the replicated topology (a catalog artifact of type `topology` activated by
//! `Command::SetTopology`), else this member's `[topology] file`, else the machines' `switch=`/`rack=`
//! labels (`Service::net_topology`).
//!
//! The replicated one is loaded from the artifact's chunks, verified against its sha256 (bytes that do not
//! verify are never used: logged, counted in `huatuo_master_net_topology_load_failures_total`, and the
//! leader behaves as with no topology), parsed once and cached by sha256: a window's judgement reads an
//! `Arc` under a read lock, never the chunks. The cache is refreshed by one point read of the replicated
//! pointer (`fsm_settings` row `topology`) per window and per `net path` / `net topology show`.

use std::sync::Arc;

use netvote::Topology;

/// How the bytes of a topology are read: CSV or TOML, told apart by their first line that is neither blank
/// nor a `#` comment (a TOML topology starts with a `[[tor]]`-style table or a `key = value`; a CSV row has
/// neither `[` nor `=`, which no host or switch name may contain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Csv,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Csv => "csv",
        }
    }

    /// The format of `text` (see the type's doc).
    pub fn detect(text: &str) -> Format {
        let first = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        match first {
            Some(l) if l.starts_with('[') || l.contains('=') => Format::Toml,
            Some(_) => Format::Csv,
            None => Format::Toml,
        }
    }
}

/// Parse a topology's bytes as the leader does: UTF-8, the format `format` (None: [`Format::detect`]),
/// `netvote::Topology`'s parser, and every name one that can name an object (`switch/NAME`,
/// `link/A--B`). The error says what is wrong (the parser names the line of a bad CSV row).
pub fn parse(bytes: &[u8], format: Option<Format>) -> Result<(Topology, Format), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let format = format.unwrap_or_else(|| Format::detect(text));
    let t = match format {
        Format::Csv => Topology::parse_csv(text),
        Format::Toml => Topology::parse_toml(text),
    }
    .map_err(|e| format!("{} topology: {e}", format.as_str()))?;
    if t.host_count() == 0 && t.switches().is_empty() {
        return Err(format!("{} topology: it names no host and no switch", format.as_str()));
    }
    // Every name becomes part of an object id: refuse what could never be filed, rather than ranking a
    // suspect whose finding silently cannot exist.
    for name in t.hosts().iter().chain(t.switches()) {
        let ok =
            state_machines::id::validate_host(name).is_ok() && !name.contains(state_machines::id::LINK_SEP);
        if !ok {
            return Err(format!(
                "name {:?} cannot name an object: 1-253 characters of A-Z a-z 0-9 . - _, without \"--\"",
                name.chars().take(80).collect::<String>()
            ));
        }
    }
    Ok((t, format))
}

/// Where the topology in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The replicated topology `name@version` with its sha256.
    Replicated { name: String, version: String, sha256: String },
    /// This member's `[topology] file`.
    File { path: String },
}

/// The topology in use and where it came from.
#[derive(Debug, Clone)]
pub struct Fabric {
    pub source: Source,
    /// The sha256 of the bytes it was parsed from: equal bytes from another source are the same fabric.
    pub sha256: String,
    pub topology: Arc<Topology>,
}

/// The leader's cache of the replicated topology: the last sha256 it loaded and the parse (None: the bytes
/// did not verify or parse; not tried again until the pointer moves or a new term starts).
#[derive(Default)]
pub(crate) struct Cache {
    pub sha256: String,
    pub parsed: Option<Arc<Topology>>,
}

/// Load the replicated topology's bytes with `chunk(index)` and verify them: every chunk present with its
/// size, the whole hashing to `sha256`, then parse. Pure of IO but for `chunk`.
pub fn load_verified(
    sha256: &str,
    size: u64,
    chunk: &mut dyn FnMut(u64) -> Result<Option<Vec<u8>>, String>,
) -> Result<Topology, String> {
    use sha2::Digest;
    if size == 0 || size > crate::catalog::MAX_ARTIFACT_BYTES {
        return Err(format!("size {size} out of range"));
    }
    let cb = crate::catalog::CHUNK_BYTES as u64;
    let n = crate::catalog::chunk_count(size);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut h = sha2::Sha256::new();
    for idx in 0..n {
        let want = if idx + 1 == n { size - idx * cb } else { cb };
        let b = chunk(idx)?.ok_or_else(|| format!("chunk {idx} of {n} is missing"))?;
        if b.len() as u64 != want {
            return Err(format!("chunk {idx} of {n} has {} bytes, not {want}", b.len()));
        }
        h.update(&b);
        bytes.extend_from_slice(&b);
    }
    let got = hex::encode(h.finalize());
    if got != sha256 {
        return Err(format!("the bytes hash to {got}, not {sha256}"));
    }
    parse(&bytes, None).map(|(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = "# fabric\n\n[[tor]]\nname = \"t1\"\nhosts = [\"a\", \"b\"]\nuplinks = [\"x\"]\n";

    #[test]
    fn the_format_is_told_by_the_first_line_that_says_something() {
        assert_eq!(Format::detect(TOML), Format::Toml);
        assert_eq!(Format::detect("tor = []\n"), Format::Toml);
        assert_eq!(Format::detect("# hosts\nhost,tor,agg,spine\nh1,t1,a1,s1\n"), Format::Csv);
        assert_eq!(Format::detect("h1,t1\n"), Format::Csv);
        let (t, f) = parse(TOML.as_bytes(), None).expect("toml");
        assert_eq!((f, t.host_count(), t.switches().len(), t.link_count()), (Format::Toml, 2, 2, 1));
        let (t, f) = parse(b"h1,t1,a1,s1\nh2,t2,a1,s1\n", None).expect("csv");
        assert_eq!((f, t.host_count(), t.switches().len(), t.link_count()), (Format::Csv, 2, 4, 3));
    }

    #[test]
    fn bad_bytes_are_refused_with_what_is_wrong() {
        for (bad, says) in [
            (&b"\xff\xfe"[..], "UTF-8"),
            (b"[[tor]]\nname = \"t1\"\nhosts = [\"a\"\n", "toml topology"),
            (b"h1,t1\nh2\n", "line 2"),
            (b"h1,tor:1\n", "tor:1"),
            (b"# nothing\n", "names no host"),
        ] {
            let e = parse(bad, None).expect_err(says);
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn only_bytes_that_verify_are_parsed() {
        let bytes = TOML.as_bytes().to_vec();
        let sha = crate::catalog::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let ok = load_verified(&sha, size, &mut |i| Ok((i == 0).then(|| bytes.clone())));
        assert_eq!(ok.map(|t| t.host_count()), Ok(2));
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        let e = load_verified(&sha, size, &mut |_| Ok(Some(flipped.clone()))).expect_err("flipped");
        assert!(e.contains("hash to"), "{e}");
        let e = load_verified(&sha, size, &mut |_| Ok(None)).expect_err("missing");
        assert!(e.contains("missing"), "{e}");
        let e = load_verified(&sha, size + 1, &mut |_| Ok(Some(bytes.clone()))).expect_err("short");
        assert!(e.contains("not"), "{e}");
    }
}
