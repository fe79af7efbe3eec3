//! The operator portal: one web page served by the master on its HTTP port (PRODUCT.md section 12). The page
//! (`portal/index.html`, `portal/app.js`, `portal/app.css`: plain JavaScript, no framework, no build step, no
//! fetch from the internet) is compiled into the binary with `include_str!`, so every master carries the
//! portal that matches its API. The page talks only to the REST API under `/api/v1` on the same origin, with
//! the operator's bearer token, and follows changes live through the NDJSON watch stream.
//!
//! Besides the assets this module serves `GET /api/v1/fsm` and `GET /api/v1/fsm/{kind}`: the state machine
//! tables (states, edges, labels, which states remove capacity) plus their Mermaid and dot text, printed from
//! the same tables `step` runs, so the diagrams the portal draws cannot drift from the code.
//!
//! Caching: the index page is `no-cache` (revalidated with its ETag on every load); it names its script and
//! style sheet with `?v=<content hash>`, and a request carrying the current hash may be cached for a year,
//! so an upgraded master's page never runs a stale script. Every response carries `nosniff`, and the page a
//! content security policy that allows only same-origin scripts, styles and connections.

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::error::ApiError;
use serde::{Deserialize, Serialize};
use state_machines::{Kind, MACHINE_KINDS, state_machine_for};

const INDEX_HTML: &str = include_str!("portal/index.html");
const APP_JS: &str = include_str!("portal/app.js");
const APP_CSS: &str = include_str!("portal/app.css");

/// The placeholder in `index.html` replaced by [`VERSION`] (asset URLs and the version shown in the page).
const VERSION_PLACEHOLDER: &str = "__PORTAL_VERSION__";

/// One embedded file served under `/portal/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 2] = [
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: APP_JS },
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: APP_CSS },
];

/// FNV-1a (64 bit): a content hash computable at compile time, for ETags and cache-busting versions. Not a
/// security boundary: it only has to change when the embedded files change.
const fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The portal version: a hash over every embedded file (index included), in hex in URLs and ETags.
const VERSION: u64 =
    fnv1a(fnv1a(fnv1a(FNV_OFFSET, INDEX_HTML.as_bytes()), APP_JS.as_bytes()), APP_CSS.as_bytes());

/// How long a browser may keep an asset requested with the current version (content-addressed: a new
/// build has a new version, so the old URL is never asked for again).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Everything else is revalidated on every use (cheap: a 304 with the ETag).
const REVALIDATE: &str = "no-cache";

/// The page may run and load only what the master itself serves; `data:` for the inline favicon. No
/// inline scripts or styles (the script builds the DOM and sets styles through the CSSOM, which CSP allows).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn version_hex() -> String {
    format!("{VERSION:016x}")
}

/// The index page with the version filled in (built on each request: a few KiB, once per page load).
fn index_html() -> String {
    INDEX_HTML.replace(VERSION_PLACEHOLDER, &version_hex())
}

/// The portal's routes: `/` and `/portal/` (the page), `/portal/{asset}`, `/api/v1/fsm[/{kind}]`. Stateless,
/// so it merges into any router: `Router::new()...merge(master::portal::router())`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/portal", get(index))
        .route("/portal/", get(index))
        .route("/portal/{name}", get(asset))
        .route("/api/v1/fsm", get(fsm_kinds))
        .route("/api/v1/fsm/{kind}", get(fsm))
}

fn etag(extra: &str) -> String {
    format!("\"{}{extra}\"", version_hex())
}

/// Whether the request's `If-None-Match` names `tag` (or `*`).
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == tag || t == "*")
}

fn respond(
    headers: &HeaderMap,
    tag: String,
    content_type: &'static str,
    cache: &'static str,
    body: String,
) -> Response {
    let mut resp = if not_modified(headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    resp
}

async fn index(headers: HeaderMap) -> Response {
    let mut resp = respond(&headers, etag("-index"), "text/html; charset=utf-8", REVALIDATE, index_html());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[derive(Debug, Default, Deserialize)]
struct AssetQuery {
    #[serde(default)]
    v: String,
}

async fn asset(
    Path(name): Path<String>,
    q: Result<Query<AssetQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        let shown: String = name.chars().take(80).collect();
        return super::HttpError(ApiError::not_found(format!("no portal file {shown:?}"))).into_response();
    };
    let current = q.is_ok_and(|Query(q)| q.v == version_hex());
    let cache = if current { IMMUTABLE } else { REVALIDATE };
    respond(&headers, etag(&format!("-{}", a.name)), a.content_type, cache, a.body.to_string())
}

/// `GET /api/v1/fsm`: the kinds that have a state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmKinds {
    pub kinds: Vec<String>,
}

/// One state of a machine as `GET /api/v1/fsm/{kind}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmState {
    pub name: String,
    /// ERROR, FIX, REPAIR: the object is out of service.
    pub removes_capacity: bool,
    /// GOOD, SLOW, WARNING: the object serves.
    pub in_service: bool,
}

/// One legal edge; `capacity_removing` edges count against quotas and pass admission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmEdge {
    pub from: String,
    pub to: String,
    pub label: String,
    pub capacity_removing: bool,
}

/// `GET /api/v1/fsm/{kind}`: the edge table of one kind, and the same machine as Mermaid and dot text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsmView {
    pub kind: String,
    /// The state new objects start in.
    pub start: String,
    pub states: Vec<FsmState>,
    pub edges: Vec<FsmEdge>,
    pub mermaid: String,
    pub dot: String,
}

/// The view of `kind`'s machine, or the API error for an unknown kind or one without a machine.
pub fn fsm_view(kind: &str) -> Result<FsmView, ApiError> {
    let k: Kind = kind.parse().map_err(|e: state_machines::IdError| {
        ApiError::invalid(format!("{e} (kinds with a state machine: disk, machine, dimm, nic)"))
    })?;
    let m = state_machine_for(k).ok_or_else(|| {
        ApiError::not_found(format!("{k} objects have no state machine (their findings are only recorded)"))
    })?;
    Ok(FsmView {
        kind: k.to_string(),
        start: m.states[0].to_string(),
        states: m
            .states
            .iter()
            .map(|s| FsmState {
                name: s.to_string(),
                removes_capacity: s.removes_capacity(),
                in_service: s.in_service(),
            })
            .collect(),
        edges: m
            .edges
            .iter()
            .map(|e| FsmEdge {
                from: e.from.to_string(),
                to: e.to.to_string(),
                label: e.label.to_string(),
                capacity_removing: state_machines::is_capacity_removing(e.from, e.to),
            })
            .collect(),
        mermaid: state_machines::diagram::mermaid(m),
        dot: state_machines::diagram::dot(m),
    })
}

async fn fsm_kinds() -> Response {
    axum::Json(FsmKinds { kinds: MACHINE_KINDS.iter().map(|k| k.to_string()).collect() }).into_response()
}

async fn fsm(Path(kind): Path<String>) -> Response {
    match fsm_view(&kind) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => super::HttpError(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    /// Serve the portal router on a free loopback port; returns its address.
    async fn serve() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let app: Router = router();
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }

    /// One plain HTTP/1.1 request; returns (status, lower-cased head, body).
    async fn get(addr: &str, path: &str, extra: &str) -> (u16, String, String) {
        let (addr, path, extra) = (addr.to_string(), path.to_string(), extra.to_string());
        tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n")
                .expect("send");
            let mut resp = String::new();
            s.read_to_string(&mut resp).expect("read");
            let status = resp.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp.as_str(), ""));
            (status, head.to_ascii_lowercase(), body.to_string())
        })
        .await
        .expect("join")
    }

    fn header_value(head: &str, name: &str) -> String {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
            .to_string()
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_types_and_cache_headers() {
        let addr = serve().await;
        let v = version_hex();
        let (status, head, body) = get(&addr, "/", "").await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
        assert!(head.contains("cache-control: no-cache"), "{head}");
        assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(!body.contains(VERSION_PLACEHOLDER), "placeholder left in the page");
        for a in &ASSETS {
            let url = format!("/portal/{}?v={v}", a.name);
            assert!(body.contains(&url), "index does not load {url}");
            let (status, head, served) = get(&addr, &url, "").await;
            assert_eq!(status, 200, "{url}: {head}");
            assert!(head.contains(&format!("content-type: {}", a.content_type)), "{url}: {head}");
            assert!(head.contains(&format!("cache-control: {IMMUTABLE}")), "{url}: {head}");
            assert_eq!(served, a.body, "{url} body");
            // A stale or missing version must be revalidated, never cached for a year.
            let (status, head, _) = get(&addr, &format!("/portal/{}?v=0", a.name), "").await;
            assert_eq!(status, 200);
            assert!(head.contains("cache-control: no-cache"), "{head}");
            // Revalidation with the ETag answers 304 without a body.
            let tag = header_value(&head, "etag");
            let (status, _, body) =
                get(&addr, &format!("/portal/{}", a.name), &format!("If-None-Match: {tag}\r\n")).await;
            assert_eq!(status, 304);
            assert!(body.is_empty());
        }
        let (status, _, page) = get(&addr, "/portal/", "").await;
        assert_eq!((status, page), (200, body));
    }

    #[tokio::test]
    async fn unknown_assets_are_json_errors() {
        let addr = serve().await;
        for path in ["/portal/nope.js", "/portal/..%2Fapp.js", "/portal/app.js%00"] {
            let (status, head, body) = get(&addr, path, "").await;
            assert_eq!(status, 404, "{path}: {head}");
            let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
            assert_eq!(v["code"], "NOT_FOUND", "{path}: {body}");
        }
    }

    #[test]
    fn assets_fetch_nothing_from_elsewhere() {
        // Only same-origin URLs: the one absolute URL allowed is the SVG namespace name (not fetched).
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            let scrubbed = text.replace("http://www.w3.org/2000/svg", "");
            for bad in ["http://", "https://", "@import", "url(//", "src=\"//", "href=\"//"] {
                assert!(!scrubbed.contains(bad), "{name} refers to {bad}");
            }
        }
        assert!(INDEX_HTML.contains(VERSION_PLACEHOLDER));
        // No inline script or style (the page's CSP forbids them; they would silently not run).
        assert!(
            !INDEX_HTML.contains("<script>")
                && !INDEX_HTML.contains("<style")
                && !INDEX_HTML.contains("style=")
        );
    }

    #[tokio::test]
    async fn fsm_api_matches_the_tables() {
        let addr = serve().await;
        let (status, _, body) = get(&addr, "/api/v1/fsm", "").await;
        assert_eq!(status, 200);
        let kinds: FsmKinds = serde_json::from_str(&body).expect("kinds");
        assert_eq!(kinds.kinds, ["disk", "machine", "dimm", "nic", "switch", "link"]);
        for kind in MACHINE_KINDS {
            let (status, head, body) = get(&addr, &format!("/api/v1/fsm/{kind}"), "").await;
            assert_eq!(status, 200, "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            let v: FsmView = serde_json::from_str(&body).expect("fsm view");
            let m = state_machine_for(kind).expect("machine");
            assert_eq!(v.start, "GOOD");
            assert_eq!(v.states.len(), m.states.len());
            assert_eq!(v.edges.len(), m.edges.len());
            for (e, t) in v.edges.iter().zip(m.edges) {
                assert_eq!(
                    (e.from.as_str(), e.to.as_str(), e.label.as_str()),
                    (t.from.as_str(), t.to.as_str(), t.label)
                );
                assert_eq!(e.capacity_removing, t.to.removes_capacity());
                assert!(v.mermaid.contains(&format!("{} --> {}: {}", t.from, t.to, t.label)));
            }
            assert!(v.dot.starts_with("digraph"));
        }
        let disk = fsm_view("disk").expect("disk");
        let removing: Vec<&str> =
            disk.states.iter().filter(|s| s.removes_capacity).map(|s| s.name.as_str()).collect();
        assert_eq!(removing, ["ERROR", "REPAIR"]);
    }

    #[tokio::test]
    async fn fsm_api_refuses_bad_kinds_clearly() {
        let addr = serve().await;
        for (path, status, code) in [
            ("/api/v1/fsm/checker", 404, "NOT_FOUND"),
            ("/api/v1/fsm/toaster", 400, "INVALID_ARGUMENT"),
            ("/api/v1/fsm/%FF%FE", 400, "INVALID_ARGUMENT"),
            ("/api/v1/fsm/DISK", 400, "INVALID_ARGUMENT"),
        ] {
            let (got, head, body) = get(&addr, path, "").await;
            // Percent-decoding to invalid UTF-8 is refused by axum's Path extractor itself (400, plain text).
            assert_eq!(got, status, "{path}: {head} {body}");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                assert_eq!(v["code"], code, "{path}: {body}");
                assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            } else {
                assert_eq!(
                    path, "/api/v1/fsm/%FF%FE",
                    "only the undecodable path may answer non-JSON: {body}"
                );
            }
        }
    }

    #[test]
    fn version_changes_with_content() {
        assert_ne!(fnv1a(FNV_OFFSET, b"a"), fnv1a(FNV_OFFSET, b"b"));
        assert_eq!(version_hex().len(), 16);
        assert!(!not_modified(&HeaderMap::new(), &etag("")));
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"x\", W/\"y\""));
        assert!(not_modified(&h, "\"y\""));
        assert!(!not_modified(&h, "\"z\""));
    }
}
