//! The portal in a real browser: headless Chromium (Debian package `chromium`) drives the page served by a
//! 3-node `huatuo master` cluster on loopback, secured as in production: HTTPS on the HTTP port with the
//! cluster's throwaway CA (Chromium trusts exactly the masters' key, see `cdp::trust_spki_arg`) and bearer
//! tokens with roles (operator, read, agent). Without a token the page asks for one; a wrong token shows the
//! 401 banner and keeps nothing. Signed in as operator, it sees a disk that fails through the findings API
//! (reported with the agent token) appear on the fleet overview live (no reload), answers "did this host
//! have a fault?" on the host page, opens the disk's history, checks the drawn state diagram against the
//! tables, puts the `cluster` scope into manual drive through the level page (with its confirmation step),
//! approves the proposal the next failure creates, and rejects another one in bulk by a host filter. On the
//! Checkers page it pauses a checker release in gray (with a reason and the confirmation step). Signed
//! in with the `read` token, approving is refused with 403 in the page and the proposal stays pending.
//! Screenshots of every step go to `$CARGO_TARGET_TMPDIR/portal-screenshots` (paths printed). Uncaught page
//! exceptions and console errors fail the test.
//!
//! Needs the `huatuo` binary (see `tests::huatuo_bin`) and Chromium; without Chromium the test fails and
//! says how to install it (CI installs it). Every wait is on a condition with a bound.

#[path = "support/cdp.rs"]
mod cdp;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use master::cluster::{LocalCluster, READY_TIMEOUT};
use master::tls::{DevCa, Usage};
use proto::client::ClientSecurity;
use proto::tls::Token;
use serde_json::{Value, json};
use tests::huatuo_bin;
use tokio_rustls::rustls;

/// Bound for anything the page shows after an API change: watch delivery, re-render, follow-up fetches.
const UI_WAIT: Duration = Duration::from_secs(20);
/// Bound for the master applying a write as seen through the API.
const API_WAIT: Duration = Duration::from_secs(20);
/// Bound for one HTTPS request of the test itself (connect, handshake, answer).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// A token no master of this test knows (long enough to look real).
const WRONG_TOKEN: &str = "0123456789abcdef0123456789abcdef-not-a-real-token";

/// How the test itself reaches the master: HTTPS trusting the cluster's CA, with a token per role.
struct Master {
    addr: String,
    tls: Arc<rustls::ClientConfig>,
    tokens: BTreeMap<&'static str, Token>,
}

impl Master {
    fn token(&self, role: &str) -> &str {
        self.tokens[role].expose()
    }
}

/// One HTTPS/1.1 request to the master with `token` (if any); returns (status, body).
fn http(m: &Master, token: Option<&str>, method: &str, path: &str, body: &str) -> (u16, String) {
    let tcp = std::net::TcpStream::connect(&m.addr).expect("connect https");
    tcp.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    tcp.set_write_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let conn = rustls::ClientConnection::new(m.tls.clone(), name).expect("tls client");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        m.addr,
        body.len()
    )
    .and_then(|_| s.flush())
    .expect("send");
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server may close without TLS close_notify after a `Connection: close` answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => panic!("{method} {path}: read: {e}"),
    }
    tests::split_answer(&String::from_utf8_lossy(&raw))
}

/// A REST call with the token of `role` that must succeed; its JSON answer.
fn api_as(m: &Master, role: &str, method: &str, path: &str, body: Value) -> Value {
    let text = if body.is_null() { String::new() } else { body.to_string() };
    let (status, resp) = http(m, Some(m.token(role)), method, path, &text);
    assert_eq!(status, 200, "{method} {path} as {role}: {resp}");
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {resp}"))
}

/// A REST call as the operator (reads and decisions of the test itself).
fn api(m: &Master, method: &str, path: &str, body: Value) -> Value {
    api_as(m, "operator", method, path, body)
}

/// The master's store revision: unchanged means nothing was written.
fn revision(m: &Master) -> u64 {
    let r = api(m, "GET", "/api/v1/objects?limit=1", Value::Null);
    r["revision"].as_u64().unwrap_or_else(|| panic!("no revision: {r}"))
}

/// What a secured test cluster needs: a throwaway CA with a certificate for the masters (127.0.0.1) and
/// one for the harness's gRPC client, plus a random token per role.
struct Secure {
    /// `[tls]` and `[[auth.tokens]]` for the masters' config.
    toml: String,
    /// The harness's own gRPC calls (leader lookup): client certificate and operator token.
    harness: ClientSecurity,
    /// The test's HTTPS calls: trust the CA.
    https: Arc<rustls::ClientConfig>,
    /// The masters' certificate (DER), whose key Chromium is told to trust.
    server_cert: Vec<u8>,
    tokens: BTreeMap<&'static str, Token>,
}

fn secure_setup(dir: &Path) -> Secure {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ca = DevCa::new("portal browser test CA").expect("CA");
    let server = ca.write_issued(dir, "master", &["127.0.0.1", "localhost"], Usage::Server).expect("cert");
    let cli = ca.write_issued(dir, "cli", &[], Usage::Client).expect("client cert");
    let tokens: BTreeMap<&'static str, Token> =
        ["operator", "read", "agent"].into_iter().map(|r| (r, master::tls::new_token())).collect();
    let mut toml = format!(
        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        server.ca.display().to_string(),
        server.cert.display().to_string(),
        server.key.display().to_string()
    );
    for (role, t) in &tokens {
        toml += &format!(
            "[[auth.tokens]]\nname = \"portal-{role}\"\nsha256 = \"{}\"\nroles = [\"{role}\"]\n",
            t.sha256_hex()
        );
    }
    let harness = ClientSecurity {
        tls: Some(cli.load().expect("client TLS files").client_config()),
        token: Some(tokens["operator"].clone()),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&server.ca).expect("CA file") {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let https =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let server_cert = CertificateDer::from_pem_file(&server.cert).expect("master certificate").to_vec();
    Secure { toml, harness, https: Arc::new(https), server_cert, tokens }
}

fn wait_api(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + API_WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {API_WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fatal(object: &str, rule: &str) -> Value {
    json!({ "findings": [{
        "object": object, "severity": "FATAL", "checker": "smart", "version": "1.4.0", "rule": rule,
        "evidence": format!("{rule}: 5 pending sectors grew to 312 in 10 minutes"),
        "readings": { "reallocated_sectors": "312" }, "time_ms": now_ms(),
    }]})
}

/// The browser plus where its screenshots go; a failed step saves `failure.png` and prints the page's
/// console before panicking.
struct Session {
    b: cdp::Browser,
    dir: PathBuf,
    shots: Vec<PathBuf>,
}

impl Session {
    fn check<T>(&mut self, step: &str, r: Result<T, String>) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                let shot = self.dir.join("failure.png");
                let saved = self.b.screenshot(&shot).map(|_| shot.display().to_string());
                panic!(
                    "{step}: {e}\nscreenshot: {saved:?}\npage console:\n{}\nscreenshots so far: {:?}",
                    self.b.console_text(),
                    self.shots
                );
            }
        }
    }

    fn wait(&mut self, step: &str, expr: &str) -> Value {
        let r = self.b.wait_for(expr, UI_WAIT);
        self.check(step, r)
    }

    fn eval(&mut self, step: &str, expr: &str) -> Value {
        let r = self.b.eval(expr);
        self.check(step, r)
    }

    fn shot(&mut self, name: &str) {
        let path = self.dir.join(format!("{name}.png"));
        let r = self.b.screenshot(&path);
        self.check(&format!("screenshot {name}"), r);
        println!("screenshot: {}", path.display());
        self.shots.push(path);
    }
}

/// JavaScript that sets a form control's value the way typing would (input + change events).
fn set_value(selector: &str, value: &str) -> String {
    format!(
        "(() => {{ const el = document.querySelector({sel}); if (!el) return false; el.value = {val}; \
         el.dispatchEvent(new Event('input', {{bubbles: true}})); el.dispatchEvent(new Event('change', \
         {{bubbles: true}})); return true; }})()",
        sel = json!(selector),
        val = json!(value)
    )
}

fn click(selector: &str) -> String {
    format!(
        "(() => {{ const el = document.querySelector({sel}); if (!el || el.disabled) return false; el.click(); \
         return true; }})()",
        sel = json!(selector)
    )
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

#[test]
fn portal_follows_a_failing_disk_live_and_approves_a_proposal() {
    let Some(chromium) = cdp::find_chromium() else {
        panic!(
            "Chromium is needed for the portal browser test and was not found on PATH: install the Debian \
             package with `apt-get install -y chromium` (CI does), or set HUATUO_CHROMIUM to its path"
        );
    };
    let bin = huatuo_bin();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let pki = tempfile::tempdir().expect("tempdir");
    let sec = secure_setup(pki.path());
    let cluster = LocalCluster::start_secure(&bin, 3, &sec.toml, sec.harness.clone()).expect("start cluster");
    let Some(leader) = rt.block_on(cluster.wait_leader(READY_TIMEOUT)) else {
        panic!("no leader; node 1 log:\n{}", cluster.log_tail(1));
    };
    let m = Master { addr: cluster.nodes[&leader].http.clone(), tls: sec.https.clone(), tokens: sec.tokens };
    let addr = m.addr.clone();

    // The page is served by the master itself, with its assets, to anyone; the API wants a token.
    let (status, page) = http(&m, None, "GET", "/", "");
    assert_eq!(status, 200, "GET / on the master (is master::portal::router() merged into http.rs?): {page}");
    assert!(page.contains("Huatuo portal"), "{page}");
    assert_eq!(http(&m, None, "GET", "/api/v1/cluster", "").0, 401, "the API needs a token");

    // Inventory, as agents would register it (with the agent token): two hosts in two racks.
    for (host, rack, disks) in [("web-01", "r1", ["sda", "sdb"]), ("web-02", "r2", ["sda", "sdb"])] {
        let mut objects = vec![json!({ "id": format!("machine/{host}"), "labels": { "rack": rack } })];
        for d in disks {
            objects.push(json!({ "id": format!("disk/{host}/{d}"), "labels": { "rack": rack },
                "attributes": { "model": "WDC WD40EFRX" } }));
        }
        api_as(&m, "agent", "POST", "/api/v1/register", json!({ "host": host, "objects": objects }));
    }

    let dir = screenshot_dir();
    let log = dir.join("chromium.log");
    // The page really runs over HTTPS with the cluster's certificate: a browser not told to trust its key
    // refuses the master.
    {
        let untrusting = dir.join("chromium-untrusting.log");
        let mut b = cdp::Browser::launch(&chromium, &untrusting, &[])
            .unwrap_or_else(|e| panic!("{e} (chromium log: {})", untrusting.display()));
        let r = b.navigate(&format!("https://{addr}/"));
        assert!(r.as_ref().is_err_and(|e| e.contains("CERT")), "an unknown CA must be refused: {r:?}");
    }
    let trust = cdp::trust_spki_arg(&sec.server_cert).expect("pin the masters' key");
    let browser = cdp::Browser::launch(&chromium, &log, &[trust])
        .unwrap_or_else(|e| panic!("{e} (chromium log: {})", log.display()));
    let mut s = Session { b: browser, dir, shots: Vec::new() };

    // Without a token the page sends the visitor to the sign-in form with the 401 banner.
    let r = s.b.navigate(&format!("https://{addr}/"));
    s.check("open the portal over HTTPS", r);
    s.wait(
        "sent to sign in",
        "location.hash.startsWith('#/login') && !!document.querySelector('#login-form')",
    );
    s.wait("401 banner without a token", "document.querySelector('#banner').dataset.status === '401'");
    s.wait("who says no token", "document.querySelector('#who').textContent.includes('no token')");

    // A wrong token: the 401 banner again (dismissed first, so it is this attempt's), the reason on the
    // form, and nothing kept or changed.
    let before = revision(&m);
    s.eval("dismiss the banner", &click("#banner button"));
    s.wait("banner dismissed", "document.querySelector('#banner').hidden");
    s.eval("type wrong token", &set_value("#login-token", WRONG_TOKEN));
    s.eval("type name", &set_value("#login-name", "browser-test"));
    s.eval("sign in with it", &click("#login-submit"));
    s.wait(
        "refused with 401",
        "document.querySelector('#banner').dataset.status === '401' && !document.querySelector('#banner').hidden \
         && document.querySelector('#banner').textContent.includes('Not signed in (401)') \
         && document.querySelector('#login-error')?.textContent.includes('401')",
    );
    s.shot("01-login-wrong-token-401");
    let kept = s.eval(
        "nothing kept",
        "[location.hash.startsWith('#/login'), sessionStorage.getItem('huatuo.token'), \
          document.querySelector('#who').textContent.includes('no token')]",
    );
    assert_eq!(kept, json!([true, null, true]), "a refused token is not kept: [on login, stored, who]");
    assert_eq!(revision(&m), before, "a refused sign-in changes nothing");

    // Sign in as operator.
    s.eval("type token", &set_value("#login-token", m.token("operator")));
    s.eval("type name", &set_value("#login-name", "browser-test"));
    s.shot("02-login");
    s.eval("sign in", &click("#login-submit"));
    s.wait("back on the fleet page", "location.hash === '#/' && !!document.querySelector('#matrix')");
    let stored = s.eval("token stored", "sessionStorage.getItem('huatuo.token')");
    assert_eq!(stored, json!(m.token("operator")));
    s.wait("who shows the name", "document.querySelector('#who').textContent.includes('browser-test')");
    s.wait("no banner once signed in", "document.querySelector('#banner').hidden");

    // Fleet overview: 4 GOOD disks, live stream connected.
    s.wait("live", "document.querySelector('#live').textContent === 'live'");
    s.wait(
        "disk row shows 4 GOOD",
        "document.querySelector('#matrix tr[data-kind=\"disk\"] td[data-state=\"GOOD\"]')?.textContent === '4'",
    );
    s.wait("scopes table", "!!document.querySelector('#scopes-compact tr[data-scope=\"cluster\"]')");
    s.eval("mark the page", "window.__noReload = true");
    s.shot("03-fleet");

    // A disk fails through the API; the open page shows it without a reload.
    let r = api_as(&m, "agent", "POST", "/api/v1/findings", fatal("disk/web-01/sdb", "smart.reallocated"));
    assert!(r["transitioned"].as_bool().unwrap_or(false), "the first failure is within quota: {r}");
    s.wait(
        "failed disk appears live",
        "window.__noReload === true && !!document.querySelector('#fleet-attention \
         tr[data-id=\"disk/web-01/sdb\"][data-state=\"ERROR\"]') && document.querySelector('#matrix \
         tr[data-kind=\"disk\"] td[data-state=\"ERROR\"]')?.textContent === '1'",
    );
    s.wait("change feed shows the transition", "!!document.querySelector('#fleet-feed li')");
    s.shot("04-fleet-disk-failed-live");

    // "Did the host where my job failed have a fault yesterday?"
    s.eval("search", "location.hash = '#/objects?q=web-01'");
    s.wait("search finds the host", "!!document.querySelector('#search-hosts a[href=\"#/host/web-01\"]')");
    s.wait(
        "search lists its objects",
        "document.querySelectorAll('#search-results tr[data-id]').length === 3",
    );
    s.shot("05-search-web-01");
    s.eval("open host", &click("#search-hosts a[href=\"#/host/web-01\"]"));
    s.wait(
        "host verdict names the fault",
        "(() => { const t = document.querySelector('#host-verdict')?.textContent || ''; \
         return t.includes('fault') && !t.includes('no faults') && t.includes('disk/web-01/sdb'); })()",
    );
    s.wait("host timeline", "!!document.querySelector('#host-timeline li[data-to=\"ERROR\"]')");
    s.shot("06-host-web-01");

    // The disk's history.
    s.eval("open disk", &click("#host-objects a[href=\"#/object/disk%2Fweb-01%2Fsdb\"]"));
    s.wait("history shows GOOD -> ERROR", "!!document.querySelector('#timeline li[data-to=\"ERROR\"]')");
    s.wait(
        "evidence shown",
        "document.querySelector('#object-body').textContent.includes('smart.reallocated')",
    );
    s.wait("diagram marks ERROR", "!!document.querySelector('svg.fsm .node.current[data-state=\"ERROR\"]')");
    s.shot("07-disk-history");

    // The state diagram is drawn from the master's tables.
    let disk = api(&m, "GET", "/api/v1/fsm/disk", Value::Null);
    let (states, edges) = (disk["states"].as_array().map(Vec::len), disk["edges"].as_array().map(Vec::len));
    s.eval("open diagram", "location.hash = '#/fsm/disk'");
    let drawn = s.wait(
        "diagram drawn",
        "(() => { const n = document.querySelectorAll('#fsm-body svg.fsm .node').length; \
         const e = document.querySelectorAll('#fsm-body svg.fsm path.edge[data-from]').length; \
         return n ? [n, e, document.querySelectorAll('#fsm-edges tbody tr').length] : null; })()",
    );
    assert_eq!(drawn, json!([states, edges, edges]), "nodes, arcs, table rows vs GET /api/v1/fsm/disk");
    s.shot("08-disk-state-machine");

    // Manual drive for the cluster scope, through the level page and its confirmation step.
    s.eval("open levels", "location.hash = '#/safety?scope=cluster'");
    s.wait("level form", "document.querySelector('#level-scope')?.value === 'cluster'");
    s.eval("choose manual", &set_value("#level-level", "manual"));
    s.eval("no reason yet", &click("#level-change"));
    s.wait("a reason is required", "document.querySelector('#level-result').textContent.includes('reason')");
    s.eval("type reason", &set_value("#level-reason", "change freeze for the browser test"));
    s.eval("change level", &click("#level-change"));
    s.wait("confirmation step", "!!document.querySelector('#level-confirm')");
    s.shot("09-level-confirm");
    let before = api(&m, "GET", "/api/v1/safety", Value::Null);
    let cluster_level = |v: &Value| {
        v["scopes"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["scope"] == "cluster"))
            .map(|x| x["level"].clone())
    };
    assert_eq!(cluster_level(&before), Some(json!("auto")), "nothing changes before the confirmation");
    s.eval("confirm level", &click("#level-confirm-yes"));
    s.wait("level changed", "!!document.querySelector('#level-done')");
    assert_eq!(cluster_level(&api(&m, "GET", "/api/v1/safety", Value::Null)), Some(json!("manual")));
    s.wait(
        "scope table shows manual",
        "document.querySelector('#scopes tr[data-scope=\"cluster\"]')?.textContent.includes('manual')",
    );

    // The next failure is held as a proposal; approve it from the queue.
    api_as(&m, "agent", "POST", "/api/v1/findings", fatal("disk/web-02/sda", "smart.pending"));
    wait_api("a pending proposal for disk/web-02/sda", || {
        let p = api(&m, "GET", "/api/v1/proposals?status=pending", Value::Null);
        p["proposals"].as_array().is_some_and(|a| a.iter().any(|x| x["object"] == "disk/web-02/sda"))
    });
    let held = api(&m, "GET", "/api/v1/objects/disk/web-02/sda", Value::Null);
    assert_eq!(held["object"]["state"], "GOOD", "manual drive holds the transition: {held}");
    s.eval("open proposals", "location.hash = '#/proposals'");
    let row = "#prop-table tr[data-object=\"disk/web-02/sda\"][data-status=\"pending\"]";
    s.wait("proposal listed", &format!("!!document.querySelector('{row}')"));
    s.wait("nav counts it", "document.querySelector('#nav-proposals').textContent === '1'");
    s.eval("select it", &click(&format!("{row} input.prop-check")));
    s.eval("type reason", &set_value("#prop-reason", "disk confirmed dead by the on-call"));
    s.wait("approve enabled", "!document.querySelector('#approve-selected').disabled");
    s.eval("approve", &click("#approve-selected"));
    s.wait("confirmation step", "!!document.querySelector('#prop-confirm')");
    s.shot("10-proposal-confirm");
    s.eval("confirm approve", &click("#prop-confirm-yes"));
    s.wait("approved", "document.querySelector('#prop-done')?.textContent.startsWith('Approved 1')");
    wait_api("the approved transition happened", || {
        api(&m, "GET", "/api/v1/objects/disk/web-02/sda", Value::Null)["object"]["state"] == "ERROR"
    });
    s.wait("queue empty", "!document.querySelector('#prop-table tr[data-status=\"pending\"]')");
    s.shot("11-proposal-approved");

    // Bulk by filter: another failure on web-02 is held; reject everything pending on that host.
    api_as(&m, "agent", "POST", "/api/v1/findings", fatal("disk/web-02/sdb", "smart.pending"));
    s.eval("filter host", &set_value("#prop-host", "web-02"));
    s.eval("apply filter", "document.querySelector('#prop-filter').requestSubmit()");
    let row = "#prop-table tr[data-object=\"disk/web-02/sdb\"][data-status=\"pending\"]";
    s.wait(
        "held proposal listed",
        &format!("location.hash.includes('host=web-02') && !!document.querySelector('{row}')"),
    );
    s.eval("type reason", &set_value("#prop-reason", "known flaky backplane on web-02, not the disk"));
    s.wait("bulk enabled", "!document.querySelector('#reject-filter').disabled");
    s.eval("reject by filter", &click("#reject-filter"));
    s.wait(
        "bulk confirmation names the filter",
        "document.querySelector('#prop-confirm')?.textContent.includes('host=web-02')",
    );
    s.shot("12-bulk-reject-confirm");
    s.eval("confirm reject", &click("#prop-confirm-yes"));
    s.wait("rejected", "document.querySelector('#prop-done')?.textContent.startsWith('Rejected 1')");
    let rejected = api(&m, "GET", "/api/v1/proposals?status=rejected", Value::Null);
    assert!(
        rejected["proposals"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["object"] == "disk/web-02/sdb" && x["decided_by"] == "browser-test")),
        "{rejected}"
    );
    assert_eq!(api(&m, "GET", "/api/v1/objects/disk/web-02/sdb", Value::Null)["object"]["state"], "GOOD");
    s.eval("back to fleet", "location.hash = '#/'");
    s.wait(
        "fleet shows both failed disks",
        "document.querySelector('#matrix tr[data-kind=\"disk\"] td[data-state=\"ERROR\"]')?.textContent === '2'",
    );
    s.shot("13-fleet-after");

    // The remaining pages render without errors.
    s.eval("open agents", "location.hash = '#/agents'");
    s.wait("agents page", "document.querySelectorAll('#agents-summary .card').length === 4 && !!document.querySelector('#agents-table div, #agents-table table')");
    s.shot("14-agents");
    s.eval("open levels", "location.hash = '#/safety'");
    s.wait("levels page", "!!document.querySelector('#scopes tr[data-scope=\"cluster\"]')");
    // The release's spike window beside its quota bars, as the API counts it (held / where it latches).
    let safety = api(&m, "GET", "/api/v1/safety", Value::Null);
    let spike = safety["scopes"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["scope"] == "checker=smart@1.4.0"))
        .map(|x| x["spike"].clone())
        .expect("the release's scope");
    assert!(spike["held"].as_u64().is_some_and(|n| n >= 1) && spike["latch_at"] == 10, "{spike}");
    let shown = format!("{} / {} per 10m", spike["held"], spike["latch_at"]);
    s.wait(
        "spike window shown",
        &format!(
            "document.querySelector('#scopes tr[data-scope=\"checker=smart@1.4.0\"] .qrow.spike')?.textContent \
             .includes('{shown}')"
        ),
    );
    s.shot("15-levels");
    s.eval("open changes", "location.hash = '#/events'");
    s.wait("changes page", "document.querySelectorAll('#events-list li[data-revision]').length >= 6");
    s.shot("16-changes");
    s.eval("open machine diagram", "location.hash = '#/fsm/machine'");
    s.wait(
        "machine diagram",
        "document.querySelectorAll('#fsm-body svg.fsm[data-kind=\"machine\"] .node').length === 6",
    );
    // Network (issue 16): the leader's last window (no agent probes here: the page says so, without errors).
    s.eval("open network", "location.hash = '#/network'");
    s.wait(
        "network page",
        "document.querySelectorAll('#net-summary .card').length === 4 && !!document.querySelector('#net-suspects div, #net-suspects table') && !!document.querySelector('#net-matrix div, #net-matrix table')",
    );
    s.shot("16b-network");

    // Checkers: a release in gray (pushed and started through REST), paused through the page with a reason
    // and its confirmation step, the new state checked through REST.
    let script = "#!/bin/sh\nprintf '{\"object\":\"machine/%s\",\"severity\":\"GOOD\",\"rule\":\"probe.ok\",\"evidence\":\"ok\"}\\n' \"$HUATUO_HOST\"\n";
    let pushed = api(
        &m,
        "POST",
        "/api/v1/catalog",
        json!({ "name": "probe", "version": "1", "type": "external",
            "content_base64": cdp::base64_encode(script.as_bytes()), "description": "browser test probe",
            "spec": { "interval_ms": 60000, "timeout_ms": 10000, "max_output_bytes": 65536, "kinds": ["machine"] },
            "by": "browser-test" }),
    );
    assert!(pushed.to_string().contains("probe"), "{pushed}");
    api(
        &m,
        "POST",
        "/api/v1/rollouts",
        json!({ "action": "start", "name": "probe", "version": "1", "percent": 50.0, "by": "browser-test",
            "reason": "gray release for the browser test" }),
    );
    let rollout_status = |m: &Master| {
        let v = api(m, "GET", "/api/v1/rollouts?name=probe", Value::Null);
        v["checkers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "probe"))
            .and_then(|c| c["rollouts"].as_array()?.iter().find(|r| r["version"] == "1").cloned())
            .unwrap_or_else(|| panic!("GET /api/v1/rollouts?name=probe lacks probe@1: {v}"))
    };
    assert_eq!(rollout_status(&m)["status"], "gray");
    s.eval("open checkers", "location.hash = '#/checkers'");
    let ro_row = "#rollouts tr[data-rollout=\"probe@1\"]";
    s.wait(
        "rollout listed in gray",
        &format!("document.querySelector('{ro_row}')?.dataset.status === 'gray'"),
    );
    s.wait("distribution lists probe", "!!document.querySelector('#dist tr[data-checker=\"probe\"]')");
    s.wait("catalog lists probe@1", "!!document.querySelector('#catalog tr[data-artifact=\"probe@1\"]')");
    s.shot("14a-checkers");
    let pause = format!("{ro_row} button[data-action=\"pause\"]");
    s.eval("pause without a reason", &click(&pause));
    s.wait(
        "a reason is required",
        "document.querySelector('#rollout-result').textContent.includes('reason')",
    );
    s.eval("type reason", &set_value("#rollout-reason", "hold probe@1 for the browser test"));
    s.eval("pause", &click(&pause));
    s.wait("confirmation step", "document.querySelector('#rollout-confirm')?.dataset.action === 'pause'");
    s.shot("14b-rollout-pause-confirm");
    assert_eq!(rollout_status(&m)["status"], "gray", "nothing changes before the confirmation");
    s.eval("confirm pause", &click("#rollout-confirm-yes"));
    s.wait("paused", "document.querySelector('#rollout-done')?.dataset.status === 'paused'");
    wait_api("probe@1 paused", || rollout_status(&m)["status"] == "paused");
    s.wait(
        "the row shows paused with resume",
        &format!(
            "document.querySelector('{ro_row}')?.dataset.status === 'paused' && \
             !!document.querySelector('{ro_row} button[data-action=\"resume\"]')"
        ),
    );
    s.shot("14c-rollout-paused");
    // Promoted, probe@1 is the stable version with no rollout in progress: the distribution offers to
    // retire it, with a reason and a confirmation; retired, the checker has no stable version.
    api(
        &m,
        "POST",
        "/api/v1/rollouts",
        json!({ "action": "promote", "name": "probe", "version": "1", "by": "browser-test",
            "reason": "promote for the browser test" }),
    );
    let retire = "#dist tr[data-checker=\"probe\"] button[data-action=\"retire\"]";
    s.wait("the retire control", &format!("!!document.querySelector('{retire}')"));
    s.eval("type reason", &set_value("#rollout-reason", "retire probe for the browser test"));
    s.eval("retire", &click(retire));
    s.wait("confirmation step", "document.querySelector('#rollout-confirm')?.dataset.action === 'retire'");
    s.eval("confirm retire", &click("#rollout-confirm-yes"));
    s.wait("retired", "document.querySelector('#rollout-done')?.textContent === 'probe@1: retire done.'");
    wait_api("probe has no stable version", || {
        let v = api(&m, "GET", "/api/v1/rollouts?name=probe", Value::Null);
        v["checkers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "probe"))
            .is_some_and(|c| c["stable_version"].as_str().unwrap_or("").is_empty())
    });
    s.wait("no retire control once retired", &format!("!document.querySelector('{retire}')"));
    s.shot("14d-checker-retired");

    // Signed in with the read token: the pages work, a decision is refused with 403 in the page (the
    // banner and the proposal form) and changes nothing.
    api_as(&m, "agent", "POST", "/api/v1/findings", fatal("disk/web-01/sda", "smart.pending"));
    wait_api("a pending proposal for disk/web-01/sda", || {
        let p = api(&m, "GET", "/api/v1/proposals?status=pending", Value::Null);
        p["proposals"].as_array().is_some_and(|a| a.iter().any(|x| x["object"] == "disk/web-01/sda"))
    });
    s.eval("switch token", "location.hash = '#/login'");
    s.wait("login form", "!!document.querySelector('#login-form')");
    s.eval("type read token", &set_value("#login-token", m.token("read")));
    s.eval("type name", &set_value("#login-name", "read-only-viewer"));
    s.eval("sign in as read", &click("#login-submit"));
    s.wait(
        "signed in as read",
        &format!(
            "location.hash === '#/' && sessionStorage.getItem('huatuo.token') === {} && \
             document.querySelector('#who').textContent.includes('read-only-viewer')",
            json!(m.token("read"))
        ),
    );
    s.eval("open proposals", "location.hash = '#/proposals'");
    let row = "#prop-table tr[data-object=\"disk/web-01/sda\"][data-status=\"pending\"]";
    s.wait("read sees the proposal", &format!("!!document.querySelector('{row}')"));
    // The page knows the token's role (GET /api/v1/whoami) and says so before the master refuses.
    s.wait(
        "the role note",
        "document.querySelector('#prop-role-note')?.textContent.includes('needs operator') && \
         document.querySelector('#who').textContent.includes('[read]')",
    );
    s.eval("select it", &click(&format!("{row} input.prop-check")));
    s.eval("type reason", &set_value("#prop-reason", "trying without the operator role"));
    s.wait("approve enabled", "!document.querySelector('#approve-selected').disabled");
    s.eval("approve", &click("#approve-selected"));
    s.wait("confirmation step", "!!document.querySelector('#prop-confirm')");
    let before = revision(&m);
    s.eval("confirm approve", &click("#prop-confirm-yes"));
    s.wait(
        "refused with 403",
        "document.querySelector('#prop-error')?.textContent.includes('403') && \
         document.querySelector('#banner').dataset.status === '403' && !document.querySelector('#banner').hidden \
         && document.querySelector('#banner').textContent.includes('Not allowed (403)')",
    );
    s.wait("still listed as pending", &format!("!!document.querySelector('{row}')"));
    s.shot("17-read-approve-refused-403");
    let pending = api(&m, "GET", "/api/v1/proposals?status=pending", Value::Null);
    assert!(
        pending["proposals"].as_array().is_some_and(|a| a
            .iter()
            .any(|x| x["object"] == "disk/web-01/sda" && x["decided_by"].as_str().unwrap_or("").is_empty())),
        "the refused approval left the proposal pending and undecided: {pending}"
    );
    assert_eq!(api(&m, "GET", "/api/v1/objects/disk/web-01/sda", Value::Null)["object"]["state"], "GOOD");
    assert_eq!(revision(&m), before, "a refused decision changes nothing");

    let console = s.b.console_text();
    let bad: Vec<&str> =
        console.lines().filter(|l| l.starts_with("EXCEPTION") || l.starts_with("console.error")).collect();
    assert!(bad.is_empty(), "the page logged errors:\n{console}");
    println!("portal screenshots ({}) in {}", s.shots.len(), s.dir.display());
}

// ------------------------------------------------------------------------------------------------------------
// Charts (issue 19): the overview's transitions per hour and rack heatmap, and an object's archived readings.

/// A secured 3-node cluster and a browser signed in as operator, screenshots into
/// `$CARGO_TARGET_TMPDIR/portal-charts/` (files named `PREFIX-*.png`, this test's old ones removed).
struct ChartsRig {
    _rt: tokio::runtime::Runtime,
    _pki: tempfile::TempDir,
    _cluster: LocalCluster,
    m: Master,
    s: Session,
    prefix: &'static str,
}

fn charts_rig(prefix: &'static str) -> ChartsRig {
    let Some(chromium) = cdp::find_chromium() else {
        panic!(
            "Chromium is needed for the portal chart tests and was not found on PATH: install the Debian \
             package with `apt-get install -y chromium` (CI does), or set HUATUO_CHROMIUM to its path"
        );
    };
    let bin = huatuo_bin();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let pki = tempfile::tempdir().expect("tempdir");
    let sec = secure_setup(pki.path());
    let cluster = LocalCluster::start_secure(&bin, 3, &sec.toml, sec.harness.clone()).expect("start cluster");
    let Some(leader) = rt.block_on(cluster.wait_leader(READY_TIMEOUT)) else {
        panic!("no leader; node 1 log:\n{}", cluster.log_tail(1));
    };
    let m = Master { addr: cluster.nodes[&leader].http.clone(), tls: sec.https.clone(), tokens: sec.tokens };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-charts");
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    for e in std::fs::read_dir(&dir).expect("list screenshot dir").flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let log = dir.join(format!("{prefix}-chromium.log"));
    let trust = cdp::trust_spki_arg(&sec.server_cert).expect("pin the masters' key");
    let browser = cdp::Browser::launch(&chromium, &log, &[trust])
        .unwrap_or_else(|e| panic!("{e} (chromium log: {})", log.display()));
    let mut s = Session { b: browser, dir, shots: Vec::new() };
    // Sign in by the token the sign-in form would keep (the form itself is covered above).
    let r = s.b.navigate(&format!("https://{}/", m.addr));
    s.check("open the portal", r);
    // The portal reads the token once, when its script starts: wait for that, keep the token, then load the
    // page anew (a query makes it a new document; a changed fragment alone would not reload it).
    s.wait("the portal started", "typeof window.huatuoPortal === 'object'");
    s.eval(
        "keep the operator token",
        &format!(
            "sessionStorage.setItem('huatuo.token', {}); sessionStorage.setItem('huatuo.operator', 'charts-test'); true",
            json!(m.token("operator"))
        ),
    );
    let r = s.b.navigate(&format!("https://{}/?signed-in#/", m.addr));
    s.check("open the overview signed in", r);
    s.wait("signed in", "document.querySelector('#who').textContent.includes('charts-test')");
    ChartsRig { _rt: rt, _pki: pki, _cluster: cluster, m, s, prefix }
}

impl ChartsRig {
    fn no_page_errors(&self) {
        let console = self.s.b.console_text();
        let bad: Vec<&str> = console
            .lines()
            .filter(|l| l.starts_with("EXCEPTION") || l.starts_with("console.error"))
            .collect();
        assert!(bad.is_empty(), "the page logged errors:\n{console}");
    }
}

fn force_to(m: &Master, object: &str, to: &str) {
    let body = json!({ "object": object, "kind": "force", "value": to, "by": "charts-test",
        "reason": "portal chart test" });
    let r = api(m, "POST", "/api/v1/commands", body);
    assert!(r.get("error").is_none_or(|e| e.is_null()), "force {object} to {to}: {r}");
}

/// Transitions into ERROR/REPAIR since `since_ms` by (kind, state), recounted from every object's history.
fn recount_transitions(m: &Master, since_ms: u64) -> BTreeMap<(String, String), u64> {
    let list = api(m, "GET", "/api/v1/objects?limit=1000", Value::Null);
    let mut out = BTreeMap::new();
    for o in list["objects"].as_array().expect("objects") {
        let id = o["id"].as_str().expect("id");
        let d = api(m, "GET", &format!("/api/v1/objects/{id}"), Value::Null);
        for e in d["history"].as_array().expect("history") {
            let to = e["to_state"].as_str().unwrap_or("");
            if e["what"] == "transition"
                && (to == "ERROR" || to == "REPAIR")
                && e["time_ms"].as_u64() >= Some(since_ms)
            {
                *out.entry((o["kind"].as_str().expect("kind").to_string(), to.to_string())).or_default() += 1;
            }
        }
    }
    out
}

/// The chart route's totals by (kind, state) (zero series left out).
fn chart_totals(chart: &Value) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for x in chart["series"].as_array().expect("series") {
        let total = x["total"].as_u64().expect("total");
        if total > 0 {
            out.insert(
                (x["kind"].as_str().expect("kind").to_string(), x["to"].as_str().expect("to").to_string()),
                total,
            );
        }
    }
    out
}

#[test]
fn portal_charts_transitions_per_hour_and_the_rack_heatmap_from_a_real_cluster() {
    let mut rig = charts_rig("overview");
    let m = &rig.m;
    let start = now_ms();
    for (host, rack) in [("web-01", "r1"), ("web-02", "r2"), ("web-03", "r3")] {
        let mut objects = vec![json!({ "id": format!("machine/{host}"), "labels": { "rack": rack } })];
        for d in ["sda", "sdb"] {
            objects.push(json!({ "id": format!("disk/{host}/{d}"), "labels": { "rack": rack } }));
        }
        api_as(m, "agent", "POST", "/api/v1/register", json!({ "host": host, "objects": objects }));
    }
    // Nothing moved yet: the overview says so rather than drawing empty charts.
    rig.s.wait("no transitions yet", "!!document.querySelector('#transitions-empty')");
    rig.s.wait(
        "three racks in the heatmap",
        "document.querySelectorAll('#fleet-racks rect.cell').length === 24",
    );
    // Transitions through the API along the state machines' edges (operator forces pass the quotas, so
    // the disk bars go over the line).
    for (object, to) in [
        ("disk/web-01/sda", "ERROR"),
        ("disk/web-01/sdb", "ERROR"),
        ("disk/web-02/sda", "ERROR"),
        ("disk/web-01/sda", "REPAIR"),
        ("disk/web-02/sda", "REPAIR"),
        ("machine/web-03", "ERROR"),
    ] {
        force_to(m, object, to);
    }
    // The route answers what the histories hold (at least what the test did; more if a state machine
    // moved on by itself), and stays equal to it.
    let mut chart = Value::Null;
    wait_api("the transitions chart equals a recount of the histories", || {
        let want = recount_transitions(m, start.saturating_sub(3_600_000));
        chart = api(m, "GET", "/api/v1/charts/transitions?hours=168", Value::Null);
        chart_totals(&chart) == want
    });
    let totals = chart_totals(&chart);
    for (kind, to, n) in [("disk", "ERROR", 3), ("disk", "REPAIR", 2), ("machine", "ERROR", 1)] {
        let got = totals.get(&(kind.to_string(), to.to_string())).copied().unwrap_or(0);
        assert!(got >= n, "{kind} into {to}: {got} < {n} the test forced: {chart}");
    }
    assert_eq!(chart["hours_ms"].as_array().map(Vec::len), Some(168), "{chart}");

    // The page draws one chart per kind, one bar per (hour, state) with transitions, with the counts in
    // the titles, and the cluster quota's line.
    let kinds: Vec<String> = {
        let mut k: Vec<String> = totals.keys().map(|(k, _)| k.clone()).collect();
        k.dedup();
        k
    };
    let expr = format!(
        "(() => {{ const svgs = [...document.querySelectorAll('#fleet-transitions svg.transitions')]; \
         if (svgs.length !== {n}) return false; \
         const bars = svgs.flatMap((svg) => [...svg.querySelectorAll('rect.bar')].map((b) => [svg.dataset.kind, \
         b.dataset.to, +b.dataset.count, b.querySelector('title').textContent])); \
         if (bars.reduce((a, b) => a + b[2], 0) !== {sum}) return false; return JSON.stringify(bars); }})()",
        n = kinds.len(),
        sum = totals.values().sum::<u64>()
    );
    let bars = rig.s.wait("charts drawn with every transition", &expr);
    let bars: Vec<(String, String, u64, String)> =
        serde_json::from_str(bars.as_str().expect("bars JSON")).expect("bars");
    let mut want_bars = 0;
    for x in chart["series"].as_array().expect("series") {
        let (kind, to) = (x["kind"].as_str().expect("kind"), x["to"].as_str().expect("to"));
        let hours: Vec<u64> =
            x["counts"].as_array().expect("counts").iter().filter_map(Value::as_u64).collect();
        let drawn: Vec<&(String, String, u64, String)> =
            bars.iter().filter(|b| b.0 == kind && b.1 == to).collect();
        assert_eq!(
            drawn.len(),
            hours.iter().filter(|n| **n > 0).count(),
            "{kind} into {to}: one bar per hour with any"
        );
        assert_eq!(
            drawn.iter().map(|b| b.2).sum::<u64>(),
            x["total"].as_u64().expect("total"),
            "{kind} {to}"
        );
        for b in drawn {
            assert!(
                b.3.starts_with(&format!("{kind} into {to}: {} in the hour from ", b.2)),
                "title: {}",
                b.3
            );
        }
        want_bars += hours.iter().filter(|n| **n > 0).count();
    }
    assert_eq!(bars.len(), want_bars, "no other bars: {bars:?}");
    let quota = chart["quotas"]
        .as_array()
        .expect("quotas")
        .iter()
        .find(|q| q["kind"] == "disk" && q["scope"] == "cluster")
        .cloned()
        .unwrap_or_else(|| panic!("the default disk quota: {chart}"));
    let line = rig.s.eval(
        "the disk quota line",
        "document.querySelector('#fleet-transitions svg.transitions[data-kind=\"disk\"] .quota-line')?.dataset.perHour ?? null",
    );
    let drawn: f64 =
        line.as_str().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no quota line: {line}"));
    assert!((drawn - quota["per_hour"].as_f64().expect("per_hour")).abs() < 1e-9, "{drawn} vs {quota}");
    let legend = rig.s.eval(
        "the legend says what the line is",
        "document.querySelector('.chart-box[data-kind=\"disk\"] .legend').textContent",
    );
    assert!(
        legend.as_str().is_some_and(|l| l.contains("per sliding") && l.contains("not drawn")),
        "{legend}"
    );
    let table_rows = rig.s.eval(
        "a table twin for screen readers",
        "document.querySelectorAll('.chart-box[data-kind=\"disk\"] table.sr-only tbody tr').length",
    );
    assert!(table_rows.as_u64().is_some_and(|n| n >= 1), "{table_rows}");

    // The heatmap: 3 racks x 8 states, each cell's count and title equal to the summary's rack scopes.
    let summary = api(m, "GET", "/api/v1/summary", Value::Null);
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for sc in summary["scopes"].as_array().expect("scopes") {
        let Some(rack) = sc["scope"].as_str().and_then(|x| x.strip_prefix("rack=")) else { continue };
        for c in sc["states"].as_array().expect("states") {
            *want.entry((rack.to_string(), c["state"].as_str().expect("state").to_string())).or_default() +=
                c["count"].as_u64().expect("count");
        }
    }
    let expect_cells =
        want.iter().filter(|(_, n)| **n > 0).map(|((r, s), n)| format!("{r}/{s}/{n}")).collect::<Vec<_>>();
    let expr = format!(
        "(() => {{ const cells = [...document.querySelectorAll('#fleet-racks rect.cell')]; if (cells.length !== 24) \
         return false; const nz = cells.filter((c) => +c.dataset.count > 0).map((c) => `${{c.dataset.rack}}/${{c.dataset.state}}/${{c.dataset.count}}`).sort(); \
         return JSON.stringify(nz) === {want} ? JSON.stringify(cells.map((c) => c.querySelector('title').textContent)) : false; }})()",
        want = json!(
            serde_json::to_string(&{
                let mut v = expect_cells.clone();
                v.sort();
                v
            })
            .expect("json")
        )
    );
    let titles = rig.s.wait("heatmap cells equal the rack counts", &expr);
    let titles: Vec<String> = serde_json::from_str(titles.as_str().expect("titles")).expect("titles JSON");
    for ((rack, state), n) in &want {
        let total: u64 = want.iter().filter(|((r, _), _)| r == rack).map(|(_, n)| n).sum();
        let t = format!("rack {rack}, {state}: {n} of {total} objects");
        assert!(titles.iter().any(|x| x.starts_with(&t)), "no cell titled {t:?} in {titles:?}");
    }
    let note = rig.s.eval("the heatmap note", "document.querySelector('#racks-note').textContent");
    assert!(note.as_str().is_some_and(|n| n.contains("3 rack values")), "{note}");
    // The screenshot is of the whole page: scrolled to the top, sticky headers stay where they belong.
    rig.s.eval("scroll to the top", "window.scrollTo(0, 0); true");
    rig.s.shot(&format!("{}-1-transitions-and-racks", rig.prefix));

    // One kind only: the disks (2 per host).
    let cells_sum = "[...document.querySelectorAll('#fleet-racks rect.cell')].reduce((a, c) => a + (+c.dataset.count), 0)";
    rig.s.eval("count disks only", &set_value("#racks-kind", "disk"));
    rig.s.wait("the heatmap counts the 6 disks", &format!("{cells_sum} === 6"));
    rig.s.eval("count every kind", &set_value("#racks-kind", ""));
    rig.s.wait("the heatmap counts the 9 objects", &format!("{cells_sum} === 9"));

    // At the heatmap's limit: 498 more racks (one machine each) make 501; 500 are drawn, the last one by
    // name (none of the new ones is out of service) is summed into "other", and the page says so.
    let extra = 501 - 3;
    for i in 0..extra {
        let host = format!("h{i:03}");
        let objects =
            vec![json!({ "id": format!("machine/{host}"), "labels": { "rack": format!("z{i:03}") } })];
        api_as(m, "agent", "POST", "/api/v1/register", json!({ "host": host, "objects": objects }));
    }
    let racks = api(m, "GET", "/api/v1/charts/racks", Value::Null);
    assert_eq!(racks["racks_total"], 501, "{}", racks["racks_total"]);
    assert_eq!(racks["racks"].as_array().map(Vec::len), Some(500));
    assert_eq!((racks["other_racks"].as_u64(), racks["other"]["total"].as_u64()), (Some(1), Some(1)));
    let objects = 9 + extra;
    let drawn = rig.s.wait(
        "the heatmap at its limit",
        &format!(
            "(() => {{ const cells = [...document.querySelectorAll('#fleet-racks rect.cell')]; \
             if (cells.length !== {cells}) return false; \
             const other = cells.filter((c) => c.dataset.other === 'true'); \
             const sum = cells.reduce((a, c) => a + (+c.dataset.count), 0); \
             return JSON.stringify([other.length, sum, document.querySelector('#racks-note').textContent]); }})()",
            cells = 501 * 8
        ),
    );
    let (other, sum, note): (usize, u64, String) =
        serde_json::from_str(drawn.as_str().expect("heatmap JSON")).expect("heatmap");
    assert_eq!((other, sum), (8, objects as u64), "one 'other' row, every object counted once");
    assert!(note.contains("501 rack values") && note.contains("the other 1 are summed"), "{note}");
    rig.s.eval("scroll to the top", "window.scrollTo(0, 0); true");
    rig.s.shot(&format!("{}-3-heatmap-at-the-limit", rig.prefix));

    // A bad query is refused and says why.
    let (status, body) = http(m, Some(m.token("read")), "GET", "/api/v1/charts/transitions?hours=1000", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 192"), "{body}");

    // The object page without an archive: says so, no error.
    rig.s.eval("open a disk", "location.hash = '#/object/disk%2Fweb-01%2Fsda'");
    rig.s.wait(
        "the readings section answers",
        "!!document.querySelector('#series-missing, #series-charts, #series-empty')",
    );
    rig.s.shot(&format!("{}-2-object-readings-section", rig.prefix));
    rig.no_page_errors();
    println!("chart screenshots ({}) in {}", rig.s.shots.len(), rig.s.dir.display());
}

/// Needs the archive route `GET /api/v1/objects/{id}/series` of the `export` branch: fails (never skips)
/// with a message saying the archive is missing when the master does not answer it.
#[test]
fn portal_object_page_charts_archived_readings() {
    let mut rig = charts_rig("object");
    let m = &rig.m;
    let objects = vec![
        json!({ "id": "machine/web-01", "labels": { "rack": "r1" } }),
        json!({ "id": "disk/web-01/sda", "labels": { "rack": "r1" } }),
    ];
    api_as(m, "agent", "POST", "/api/v1/register", json!({ "host": "web-01", "objects": objects }));
    // Three readings a minute apart: smart_5_raw and score change, temperature does not.
    let t0 = now_ms() - 180_000;
    for (i, (sev, raw, score)) in
        [("GOOD", "0", "3"), ("WARNING", "8", "2"), ("WARNING", "24", "1")].iter().enumerate()
    {
        let f = json!({ "findings": [{
            "object": "disk/web-01/sda", "severity": sev, "checker": "disk", "version": "1.0.0", "rule": "smart",
            "evidence": "smart attributes", "time_ms": t0 + 60_000 * i as u64,
            "readings": { "smart_5_raw": raw, "score": score, "temperature_c": "38" },
        }]});
        api_as(m, "agent", "POST", "/api/v1/findings", f);
    }
    let path = "/api/v1/objects/disk/web-01/sda/series?days=30";
    let (status, body) = http(m, Some(m.token("read")), "GET", path, "");
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert!(
        status == 200 && parsed["points"].is_array(),
        "the archive is missing: GET {path} answered {status} {body} (this test needs the `export` branch's \
         archive route, GET /api/v1/objects/{{id}}/series -> {{object, from_ms, to_ms, truncated, points}})"
    );
    let mut series = Value::Null;
    wait_api("the archive holds the three readings", || {
        series = api(m, "GET", path, Value::Null);
        series["points"].as_array().is_some_and(|p| p.len() >= 3)
    });
    // The keys whose value changes get a chart each; the rest are listed as unchanged.
    let points = series["points"].as_array().expect("points");
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for p in points {
        for (k, v) in p["values"].as_object().into_iter().flatten() {
            if let Some(v) = v.as_f64() {
                values.entry(k.clone()).or_default().push(v);
            }
        }
    }
    let changing: Vec<String> =
        values.iter().filter(|(_, v)| v.iter().any(|x| *x != v[0])).map(|(k, _)| k.clone()).collect();
    assert!(changing.iter().any(|k| k == "smart_5_raw"), "smart_5_raw changes: {series}");
    rig.s.eval("open the disk", "location.hash = '#/object/disk%2Fweb-01%2Fsda'");
    let drawn = rig.s.wait(
        "a chart per changing value",
        "document.querySelector('#series-charts') && JSON.stringify([...document.querySelectorAll('#series-charts svg.line')].map((s) => s.dataset.key).sort())",
    );
    let drawn: Vec<String> = serde_json::from_str(drawn.as_str().expect("keys")).expect("keys JSON");
    assert_eq!(drawn, changing, "{series}");
    let bands = rig.s.eval(
        "the severity band",
        "JSON.stringify([...document.querySelectorAll('#series-charts svg.band rect.sev')].map((r) => r.dataset.severity))",
    );
    let bands: Vec<String> = serde_json::from_str(bands.as_str().expect("bands")).expect("bands JSON");
    assert!(bands.contains(&"GOOD".to_string()) && bands.contains(&"WARNING".to_string()), "{bands:?}");
    // Hover at the right end shows the newest value and its time.
    let last = values["smart_5_raw"].last().copied().expect("a value");
    let readout = rig.s.eval(
        "hover the smart_5_raw chart",
        "(() => { const svg = document.querySelector('#series-charts svg.line[data-key=\"smart_5_raw\"]'); \
         const b = svg.getBoundingClientRect(); svg.dispatchEvent(new MouseEvent('mousemove', { clientX: b.right - 2, \
         clientY: b.top + 10, bubbles: true })); return svg.querySelector('.readout').textContent; })()",
    );
    assert!(
        readout.as_str().is_some_and(|r| r.starts_with(&format!("smart_5_raw = {last} at "))),
        "readout {readout} (newest value {last})"
    );
    rig.s.shot(&format!("{}-1-readings", rig.prefix));
    rig.no_page_errors();
}

#[test]
fn portal_asks_the_master_for_what_needs_attention_beyond_its_first_10000_objects() {
    // 11,000 disks of hosts aa-00..aa-10 sort before every other object, so the page's own copy (the
    // first 10,000 in id order) holds none of zz-late's objects: its faults must come from the master's
    // listing by state.
    let mut rig = charts_rig("attention");
    for h in 0..11 {
        let host = format!("aa-{h:02}");
        let objects: Vec<Value> = (0..1000)
            .map(|d| json!({ "id": format!("disk/{host}/d{d:04}"), "labels": { "rack": "r1" } }))
            .collect();
        api_as(&rig.m, "agent", "POST", "/api/v1/register", json!({ "host": host, "objects": objects }));
    }
    let late = vec![
        json!({ "id": "machine/zz-late", "labels": { "rack": "r9" } }),
        json!({ "id": "disk/zz-late/sda", "labels": { "rack": "r9" } }),
        json!({ "id": "disk/zz-late/sdb", "labels": { "rack": "r9" } }),
    ];
    api_as(&rig.m, "agent", "POST", "/api/v1/register", json!({ "host": "zz-late", "objects": late }));
    force_to(&rig.m, "disk/zz-late/sdb", "ERROR");
    force_to(&rig.m, "disk/aa-00/d0007", "ERROR");
    let list = api(&rig.m, "GET", "/api/v1/objects?limit=10000", Value::Null);
    assert!(
        list["next_page_token"].as_str().is_some_and(|t| !t.is_empty())
            && !list.to_string().contains("zz-late"),
        "the first 10,000 objects leave zz-late out"
    );
    // Load the portal again (a new document, not a hash change): it lists the fleet as it is now, cut at
    // 10,000 (the page it had followed every registration live, uncut).
    let url = format!("https://{}/?reloaded#/", rig.m.addr);
    let r = rig.s.b.navigate(&url);
    rig.s.check("reload the overview", r);
    rig.s.wait(
        "the overview's needs-attention table names both faults, the late one too",
        "!!document.querySelector('#fleet-attention tr[data-id=\"disk/zz-late/sdb\"]') && \
         !!document.querySelector('#fleet-attention tr[data-id=\"disk/aa-00/d0007\"]')",
    );
    rig.s.eval("search without a state", "location.hash = '#/objects?kind=disk'");
    rig.s.wait(
        "the page says it holds the first 10,000 objects",
        "document.querySelector('#search-results').textContent.includes('holds the first 10,000 objects')",
    );
    // A text search naming a host beyond the first 10,000 asks the master for that host's objects.
    rig.s.eval("search the late host by name", "location.hash = '#/objects?q=zz-late'");
    let ids = rig.s.wait(
        "the late host's objects found by text",
        "(() => { const r = [...document.querySelectorAll('#search-results tr[data-id]')].map((t) => t.dataset.id); \
         return r.length === 3 ? JSON.stringify(r) : false; })()",
    );
    assert_eq!(ids.as_str(), Some(r#"["disk/zz-late/sda","disk/zz-late/sdb","machine/zz-late"]"#));
    rig.s.wait(
        "with its host link and the note that the master listed it",
        "!!document.querySelector('#search-hosts a[href=\"#/host/zz-late\"]') && \
         document.querySelector('#search-cut').textContent.includes('the objects of host zz-late')",
    );
    // An object id names its host too; the text still filters the answer.
    rig.s.eval("search an object id", "location.hash = '#/objects?q=disk/zz-late/sdb'");
    let ids = rig.s.wait(
        "the one object found by id",
        "(() => { const r = [...document.querySelectorAll('#search-results tr[data-id]')].map((t) => t.dataset.id); \
         return r.length === 1 ? JSON.stringify(r) : false; })()",
    );
    assert_eq!(ids.as_str(), Some(r#"["disk/zz-late/sdb"]"#));
    rig.s.eval("back to the overview", "location.hash = '#/'");
    rig.s.wait(
        "the objects card counts the whole fleet",
        "document.querySelector('#card-objects .value').textContent.replace(/\\D/g, '') === '11003'",
    );
    // Live: a fault appearing later beyond the first 10,000 joins the table.
    force_to(&rig.m, "machine/zz-late", "ERROR");
    rig.s.wait(
        "a later fault beyond the first 10,000 appears",
        "!!document.querySelector('#fleet-attention tr[data-id=\"machine/zz-late\"]')",
    );
    rig.s.shot(&format!("{}-1-overview", rig.prefix));
    // A search by state asks the master too; the text filter applies to its answer.
    rig.s.eval("search ERROR disks", "location.hash = '#/objects?kind=disk&state=ERROR'");
    let ids = rig.s.wait(
        "both ERROR disks found",
        "(() => { const r = [...document.querySelectorAll('#search-results tr[data-id]')].map((t) => t.dataset.id); \
         return r.length === 2 ? JSON.stringify(r) : false; })()",
    );
    assert_eq!(ids.as_str(), Some(r#"["disk/aa-00/d0007","disk/zz-late/sdb"]"#));
    rig.s.eval("search not GOOD on zz-late", "location.hash = '#/objects?state=not-good&q=zz-late'");
    let ids = rig.s.wait(
        "the late host's faults only",
        "(() => { const r = [...document.querySelectorAll('#search-results tr[data-id]')].map((t) => t.dataset.id); \
         return r.length === 2 && !r.includes('disk/aa-00/d0007') ? JSON.stringify(r) : false; })()",
    );
    assert_eq!(ids.as_str(), Some(r#"["disk/zz-late/sdb","machine/zz-late"]"#));
    rig.s.shot(&format!("{}-2-search", rig.prefix));
    rig.no_page_errors();
    // The same listing over REST, a page of one at a time, and the leader served it from its index.
    let (mut ids, mut token) = (Vec::new(), String::new());
    for _ in 0..10 {
        let page = api(
            &rig.m,
            "GET",
            &format!("/api/v1/objects?state=ERROR&limit=1&page_token={token}"),
            Value::Null,
        );
        ids.extend(page["objects"].as_array().expect("objects").iter().map(|o| o["id"].to_string()));
        token = page["next_page_token"].as_str().unwrap_or_default().to_string();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(ids, [r#""disk/aa-00/d0007""#, r#""disk/zz-late/sdb""#, r#""machine/zz-late""#]);
    let (status, metrics) = http(&rig.m, Some(rig.m.token("read")), "GET", "/metrics", "");
    let indexed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("huatuo_master_state_listing_pages_indexed_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(
        status == 200 && indexed.is_some_and(|n| n >= 3),
        "listings by state served from the index: {indexed:?}"
    );
}
