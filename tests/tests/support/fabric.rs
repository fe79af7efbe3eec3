//! A small Clos fabric in network namespaces for the network fault localisation tests (issue 16):
//! [`HOSTS`] hosts, each a namespace with one veth (`eth0`) to its ToR; [`TORS`] ToR bridges and one spine
//! bridge, all inside one "fabric" namespace (never the root namespace), each ToR joined to the spine by a
//! veth pair (the ToR's uplink: `upT` on the ToR, `spT` on the spine); and a control namespace on the spine
//! bridge for the masters and the test's clients. One flat subnet, 10.78.0.0/16, that exists only inside
//! these namespaces: control 10.78.0.1, host `i` (1-based) under ToR `t` at 10.78.t.i. [`topology_toml`]
//! describes it for the masters' `[topology]`.
//!
//! Loss is nftables: [`Fabric::host_loss`] drops a share of everything a host's `eth0` sends and receives
//! (an `inet` table in the host's namespace), [`Fabric::uplink_loss`] a share of every frame a ToR bridge
//! forwards to or from its uplink (a `bridge` table in the fabric namespace), both with `numgen random`.
//!
//! Every namespace carries a prefix unique to the run (`nf<PID>x<N>-`: process id and a counter), so
//! parallel tests each get their own fabric; [`Fabric`]'s Drop kills the processes it started and deletes
//! every namespace (their veths, bridges and nftables tables go with them), whatever happens. A test process
//! killed before its Drop ran leaves its namespaces; the next [`Fabric::up`] deletes those of dead pids.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::netns_util::{self, enter, sh};

/// Hosts in the fabric: the issue asks for at least 12.
pub const HOSTS: usize = 12;
/// ToR bridges; hosts are spread evenly, `HOSTS / TORS` under each.
pub const TORS: usize = 3;
pub const HOSTS_PER_TOR: usize = HOSTS / TORS;
/// The interface every host reaches its ToR through (the `IF` of `nic/HOST/IF`).
pub const HOST_IFACE: &str = "eth0";
/// The single spine switch's name in the topology.
pub const SPINE: &str = "spine1";
/// Longest an echo server's accept loop sleeps between polls of its stop flag: bounds how long
/// [`Echo::stop`] waits for its threads.
const ECHO_POLL: Duration = Duration::from_millis(20);
/// Socket timeout of one echo connection on the server side: a client that stalls (its packets dropped)
/// cannot hold the server's thread longer than this.
const ECHO_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections one echo server handles at once: every other host probing it at the same moment, with room.
const ECHO_MAX_CONNS: usize = 4 * HOSTS;
/// Largest probe payload the echo server answers (probes are a few bytes).
const ECHO_MAX: usize = 64;
/// Lines of a process's log shown when a test fails.
const LOG_TAIL_LINES: usize = 30;

/// Run counter: two fabrics of one test process never share a prefix.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// A host's name in the topology, the agent config and object ids: `host01`..`host12`.
pub fn host_name(i: usize) -> String {
    format!("host{i:02}")
}

/// The ToR (1-based) host `i` (1-based) hangs off.
pub fn tor_of(i: usize) -> usize {
    (i - 1) / HOSTS_PER_TOR + 1
}

pub fn tor_name(t: usize) -> String {
    format!("tor{t}")
}

/// The hosts (1-based) under ToR `t`.
pub fn hosts_of(t: usize) -> Vec<usize> {
    (1..=HOSTS).filter(|&i| tor_of(i) == t).collect()
}

pub fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, tor_of(i) as u8, i as u8)
}

/// The control namespace's address (masters and the test's clients).
pub const CTL_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

/// The topology of the fabric in `netvote::Topology`'s TOML form: one `[[spine]]` and the ToRs with their
/// hosts and that spine as their uplink (a two-tier fabric: no `[[agg]]`), so a ToR's uplink is the link
/// `spine1--torT`.
pub fn topology_toml() -> String {
    let mut s = format!("[[spine]]\nname = \"{SPINE}\"\n");
    for t in 1..=TORS {
        let hosts: Vec<String> = hosts_of(t).iter().map(|&i| format!("\"{}\"", host_name(i))).collect();
        s += &format!(
            "\n[[tor]]\nname = \"{}\"\nhosts = [{}]\nuplinks = [\"{SPINE}\"]\n",
            tor_name(t),
            hosts.join(", ")
        );
    }
    s
}

/// The namespaces and the processes started in them; Drop removes all of it.
pub struct Fabric {
    pub prefix: String,
    pub dir: tempfile::TempDir,
    children: Vec<(String, Child)>,
}

impl Fabric {
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }
    pub fn fabric_ns(&self) -> String {
        format!("{}fab", self.prefix)
    }
    pub fn ctl_ns(&self) -> String {
        format!("{}ctl", self.prefix)
    }
    /// Every namespace of this fabric.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.fabric_ns(), self.ctl_ns()];
        v.extend((1..=HOSTS).map(|i| self.host_ns(i)));
        v
    }

    /// Build the fabric. `Ok(None)` (after printing why) where network namespaces are not permitted;
    /// `Err` when building it failed where they are (whatever was built is removed again).
    pub fn up(what: &str) -> Result<Option<Fabric>, String> {
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nf{}x{n}-", std::process::id());
        if let Err(e) = netns_util::permitted(&prefix) {
            println!("[{what}] SKIPPED: network namespaces are not permitted here ({e})");
            return Ok(None);
        }
        netns_util::require_nft(what);
        sweep_orphans();
        let fabric =
            Fabric { prefix, dir: tempfile::tempdir().map_err(|e| e.to_string())?, children: Vec::new() };
        // On error `fabric` drops here and removes what was made.
        fabric.build()?;
        Ok(Some(fabric))
    }

    fn build(&self) -> Result<(), String> {
        let fab = self.fabric_ns();
        sh(&["ip", "netns", "add", &fab])?;
        sh(&["ip", "-n", &fab, "link", "set", "lo", "up"])?;
        let bridge = |name: &str| -> Result<(), String> {
            sh(&["ip", "-n", &fab, "link", "add", name, "type", "bridge"])?;
            sh(&["ip", "-n", &fab, "link", "set", name, "up"])
        };
        // A port on bridge `br`, the far end of a veth made elsewhere.
        let port = |name: &str, br: &str| -> Result<(), String> {
            sh(&["ip", "-n", &fab, "link", "set", name, "master", br])?;
            sh(&["ip", "-n", &fab, "link", "set", name, "up"])
        };
        bridge("spine")?;
        for t in 1..=TORS {
            let tor = format!("tor{t}");
            bridge(&tor)?;
            let (up, sp) = (format!("up{t}"), format!("sp{t}"));
            sh(&["ip", "-n", &fab, "link", "add", &up, "type", "veth", "peer", "name", &sp])?;
            port(&up, &tor)?;
            port(&sp, "spine")?;
        }
        // A namespace with one interface `eth0` at `ip` whose other end is port `name` on bridge `br`.
        let attach = |ns: &str, ip: Ipv4Addr, name: &str, br: &str| -> Result<(), String> {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip", "-n", ns, "link", "add", HOST_IFACE, "type", "veth", "peer", "name", name, "netns",
                &fab,
            ])?;
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/16"), "dev", HOST_IFACE])?;
            sh(&["ip", "-n", ns, "link", "set", HOST_IFACE, "up"])?;
            port(name, br)
        };
        attach(&self.ctl_ns(), CTL_IP, "ctl", "spine")?;
        for i in 1..=HOSTS {
            attach(&self.host_ns(i), host_ip(i), &format!("h{i}"), &format!("tor{}", tor_of(i)))?;
        }
        Ok(())
    }

    /// Drop `pct`% of the packets host `i`'s `eth0` sends and of those it receives (0 removes the rule).
    pub fn host_loss(&self, i: usize, pct: u32) -> Result<(), String> {
        let ns = self.host_ns(i);
        if pct == 0 {
            return sh(&["ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", "loss"]);
        }
        let rules = format!(
            "table inet loss {{\n chain input_loss {{\n  type filter hook input priority 0; policy accept;\n  \
             iifname \"{HOST_IFACE}\" numgen random mod 100 < {pct} drop\n }}\n chain output_loss {{\n  type filter \
             hook output priority 0; policy accept;\n  oifname \"{HOST_IFACE}\" numgen random mod 100 < {pct} drop\n \
             }}\n}}\n"
        );
        self.nft(&ns, &format!("host{i}"), &rules)
    }

    /// Drop `pct`% of the frames ToR `t` forwards to its uplink and of those it receives from it (0
    /// removes the rule). Traffic between two hosts under `t` never crosses the uplink and is untouched.
    pub fn uplink_loss(&self, t: usize, pct: u32) -> Result<(), String> {
        let fab = self.fabric_ns();
        let table = format!("uplink{t}");
        if pct == 0 {
            return sh(&["ip", "netns", "exec", &fab, "nft", "delete", "table", "bridge", &table]);
        }
        let rules = format!(
            "table bridge {table} {{\n chain forward_loss {{\n  type filter hook forward priority 0; policy \
             accept;\n  iifname \"up{t}\" numgen random mod 100 < {pct} drop\n  oifname \"up{t}\" numgen random mod \
             100 < {pct} drop\n }}\n}}\n"
        );
        self.nft(&fab, &table, &rules)
    }

    fn nft(&self, ns: &str, name: &str, rules: &str) -> Result<(), String> {
        let path = self.dir.path().join(format!("{name}.nft"));
        std::fs::write(&path, rules).map_err(|e| e.to_string())?;
        sh(&["ip", "netns", "exec", ns, "nft", "-f", &path.display().to_string()])
    }

    /// A file in the fabric's scratch directory (configs, the topology).
    pub fn write(&self, name: &str, content: &str) -> Result<PathBuf, String> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Start `program args` in namespace `ns` (through `ip netns exec`, which execs it: the child is the
    /// program itself), stderr and stdout to `NAME.log` in the scratch directory. Drop kills it.
    pub fn spawn(
        &mut self,
        name: &str,
        ns: &str,
        program: &std::path::Path,
        args: &[&str],
    ) -> Result<(), String> {
        let log =
            std::fs::File::create(self.dir.path().join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let out = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// The process id of a started process (`ip netns exec` execs it, so it is the program's own).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    /// Names of started processes that have exited, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        for (name, c) in &mut self.children {
            if let Ok(Some(st)) = c.try_wait() {
                v.push(format!("{name} ({st})"));
            }
        }
        v
    }

    /// The last lines of a started process's log.
    pub fn log_tail(&self, name: &str) -> String {
        let t = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Run `f` on a new thread that has entered namespace `ns` (its sockets live there).
    pub fn in_ns<T, F>(&self, ns: &str, f: F) -> std::thread::JoinHandle<Result<T, String>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter(&ns)?;
            Ok(f())
        })
    }

    /// An echo server on `port` in every host's namespace (threads; [`Echo::stop`] ends them).
    pub fn echo(&self, port: u16) -> Result<Echo, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 1..=HOSTS {
            let addr = SocketAddr::from((host_ip(i), port));
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            threads.push(self.in_ns(&self.host_ns(i), move || {
                let l = match TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                    Ok(l) => l,
                    Err(e) => return tx.send(Err(format!("echo bind {addr}: {e}"))).unwrap_or(()),
                };
                if tx.send(Ok(())).is_err() {
                    return;
                }
                serve_echo(&l, &stop);
            }));
            // Bound: a thread that dies before it answers closes the channel, which `recv` reports.
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("echo thread of host {i} ended before binding")),
            }
        }
        Ok(Echo { stop, threads })
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            // Cleanup: a child that already exited cannot be killed, and that is fine.
            if c.kill().is_ok() {
                c.wait().ok();
            }
        }
        for ns in self.namespaces() {
            // Cleanup of a half-built fabric: namespaces not made yet are not there to delete.
            sh(&["ip", "netns", "del", &ns]).ok();
        }
    }
}

/// Delete the namespaces of fabrics whose test process is gone (killed before its Drop could run, e.g. by
/// a CI timeout): `nf<PID>x<N>-...` where no process PID exists. Another live test's fabric is left alone.
fn sweep_orphans() {
    let Ok(names) = netns_util::list() else { return };
    for name in names {
        let Some(pid) = name.strip_prefix("nf").and_then(|r| r.split_once('x')).map(|(pid, _)| pid) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: a namespace another sweeper deleted first is fine.
            if sh(&["ip", "netns", "del", &name]).is_ok() {
                println!("[fabric] deleted {name}, left by a test process that no longer exists");
            }
        }
    }
}

fn serve_echo(l: &TcpListener, stop: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                // A thread per connection, so one probe whose packets are dropped does not hold up the
                // others; at the limit the connection is closed unanswered (the client counts it lost).
                if open.fetch_add(1, Ordering::Relaxed) >= ECHO_MAX_CONNS {
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let open = open.clone();
                std::thread::spawn(move || {
                    echo_one(s);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(_) => std::thread::sleep(ECHO_POLL),
        }
    }
}

fn echo_one(mut s: TcpStream) {
    // Blocking reads with a timeout: a probe whose packets are dropped stalls this thread at most this long.
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(ECHO_IO_TIMEOUT)).is_err() {
        return;
    }
    if s.set_write_timeout(Some(ECHO_IO_TIMEOUT)).is_err() {
        return;
    }
    let mut buf = [0u8; ECHO_MAX];
    if let Ok(n) = s.read(&mut buf)
        && n > 0
    {
        // A reply lost to the injected loss is the client's to count.
        s.write_all(&buf[..n]).ok();
    }
}

/// The echo servers of [`Fabric::echo`].
pub struct Echo {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Echo {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            // Each ends within ECHO_POLL plus one ECHO_IO_TIMEOUT.
            t.join().ok();
        }
    }
}

/// One connect + echo probe from the calling thread's namespace: whether `payload` came back within
/// `timeout` for the connect and `timeout` for the reply.
pub fn probe(addr: SocketAddr, timeout: Duration, payload: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else { return false };
    if s.set_read_timeout(Some(timeout)).is_err() || s.set_write_timeout(Some(timeout)).is_err() {
        return false;
    }
    if s.write_all(payload).is_err() {
        return false;
    }
    let mut got = vec![0u8; payload.len()];
    let deadline = Instant::now() + timeout;
    let mut n = 0;
    while n < got.len() && Instant::now() < deadline {
        match s.read(&mut got[n..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    n == got.len() && got == payload
}
