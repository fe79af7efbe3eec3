//! Parsers for `/proc/net/snmp`, `/proc/net/netstat` and `/proc/net/route` (pure, plus one reader at the
//! edge). The agent's `net-probe` checker reports the host's own TCP retransmissions per probe window
//! (issue 16): a host whose flows retransmit a lot while its peers look healthy points at its own NIC or
//! uplink. Counters are cumulative since boot, so only deltas over a window mean anything
//! (ENGINEERING.md section 4).
//!
//! Both snmp files are pairs of lines, a header naming the fields and a line of values with the same
//! `Section:` prefix (`Tcp: ... RetransSegs ...` / `Tcp: ... 227 ...`). Fields are read by name, never by
//! position: kernels add fields (`Ip: ... OutTransmits` since 6.x) and old kernels lack some.
//!
//! `/proc/net/route` names the interface a destination leaves by: the agent reports it as the `iface` of
//! its probe windows (`nic/HOST/IFACE`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

/// Largest file read: the real files are 1-5 KiB; anything bigger is not one of them.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Most routes kept from `/proc/net/route`: a host has a handful; a router's full table is not what the
/// agent needs, and its lookups stay cheap.
pub const MAX_ROUTES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetstatError {
    #[error("reading {path}: {msg}")]
    Io { path: String, msg: String },
    #[error("{path}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("line {line}: {msg}")]
    Malformed { line: usize, msg: String },
    #[error("missing counter {section}:{field}")]
    Missing { section: String, field: String },
}

fn malformed(line: usize, msg: impl Into<String>) -> NetstatError {
    NetstatError::Malformed { line, msg: msg.into() }
}

/// The counters of one snmp-style file: section -> field -> value (`MaxConn` is -1, hence signed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    sections: BTreeMap<String, BTreeMap<String, i128>>,
}

impl Table {
    pub fn get(&self, section: &str, field: &str) -> Option<i128> {
        self.sections.get(section).and_then(|s| s.get(field)).copied()
    }

    /// A counter that must be there and be non-negative.
    pub fn counter(&self, section: &str, field: &str) -> Result<u64, NetstatError> {
        self.get(section, field)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| NetstatError::Missing { section: section.to_string(), field: field.to_string() })
    }

    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.keys().map(String::as_str)
    }
}

/// Parse `/proc/net/snmp` or `/proc/net/netstat`. A value line must follow its header with the same prefix
/// and as many fields; empty lines are skipped.
pub fn parse(text: &str) -> Result<Table, NetstatError> {
    let mut table = Table::default();
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    while let Some((i, header)) = lines.next() {
        let (section, names) =
            header.split_once(':').ok_or_else(|| malformed(i + 1, "expected `Section: fields`"))?;
        let Some((j, values)) = lines.next() else {
            return Err(malformed(i + 1, format!("header {section:?} without a value line")));
        };
        let (vsection, values) =
            values.split_once(':').ok_or_else(|| malformed(j + 1, "expected `Section: values`"))?;
        if vsection != section {
            return Err(malformed(j + 1, format!("values of {vsection:?} after the header of {section:?}")));
        }
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if names.len() != values.len() {
            return Err(malformed(
                j + 1,
                format!("{section}: {} names but {} values", names.len(), values.len()),
            ));
        }
        let fields = table.sections.entry(section.to_string()).or_default();
        for (n, v) in names.into_iter().zip(values) {
            let v: i128 =
                v.parse().map_err(|_| malformed(j + 1, format!("{section}:{n}: {v:?} is not a number")))?;
            fields.insert(n.to_string(), v);
        }
    }
    Ok(table)
}

/// The host's TCP counters the prober reports (cumulative since boot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `Tcp: RetransSegs` (/proc/net/snmp): segments retransmitted.
    pub retrans_segs: u64,
    /// `Tcp: OutSegs` (/proc/net/snmp): segments sent, retransmissions excluded.
    pub out_segs: u64,
    /// `TcpExt: TCPLostRetransmit` (/proc/net/netstat): retransmissions that were lost again, a sign of
    /// heavy loss on the path. None when netstat lacks it or was not read.
    pub lost_retransmit: Option<u64>,
}

/// Counter increases over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpDelta {
    pub retrans_segs: u64,
    pub out_segs: u64,
    pub lost_retransmit: u64,
}

impl TcpCounters {
    /// The increase since `before`. A counter that went backwards (a network namespace re-created, a
    /// 32-bit wrap on an old kernel) counts as 0 for that window rather than a huge bogus figure.
    pub fn delta(&self, before: &TcpCounters) -> TcpDelta {
        TcpDelta {
            retrans_segs: self.retrans_segs.saturating_sub(before.retrans_segs),
            out_segs: self.out_segs.saturating_sub(before.out_segs),
            lost_retransmit: match (self.lost_retransmit, before.lost_retransmit) {
                (Some(a), Some(b)) => a.saturating_sub(b),
                _ => 0,
            },
        }
    }
}

/// The TCP counters from the texts of /proc/net/snmp and (optionally) /proc/net/netstat.
pub fn tcp_counters(snmp: &str, netstat: Option<&str>) -> Result<TcpCounters, NetstatError> {
    let s = parse(snmp)?;
    let lost_retransmit = match netstat {
        Some(text) => parse(text)?.get("TcpExt", "TCPLostRetransmit").and_then(|v| u64::try_from(v).ok()),
        None => None,
    };
    Ok(TcpCounters {
        retrans_segs: s.counter("Tcp", "RetransSegs")?,
        out_segs: s.counter("Tcp", "OutSegs")?,
        lost_retransmit,
    })
}

fn read_capped(path: &Path) -> Result<String, NetstatError> {
    let shown = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| NetstatError::Io { path: shown(), msg: e.to_string() })?;
    // procfs files report size 0; the cap is for a recorded tree holding the wrong file.
    if meta.len() > MAX_FILE_BYTES {
        return Err(NetstatError::TooLarge { path: shown() });
    }
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| NetstatError::Io { path: shown(), msg: e.to_string() })?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| NetstatError::Io { path: shown(), msg: e.to_string() })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(NetstatError::TooLarge { path: shown() });
    }
    Ok(text)
}

/// Read the TCP counters under `root` (`/` in production, a recorded tree in tests). netstat is optional
/// (some containers hide it); snmp is not.
pub fn read_tcp_counters(root: &Path) -> Result<TcpCounters, NetstatError> {
    let snmp = read_capped(&root.join("proc/net/snmp"))?;
    let netstat = read_capped(&root.join("proc/net/netstat")).ok();
    tcp_counters(&snmp, netstat.as_deref())
}

/// One IPv4 route of `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Ipv4Addr,
    pub mask: Ipv4Addr,
    pub metric: u32,
}

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;

/// A `/proc/net/route` address: the kernel prints the network-order 32-bit value as a native-endian
/// integer in hex, so the bytes come back with the native order of the machine that wrote the file.
fn route_addr(hex: &str, line: usize) -> Result<Ipv4Addr, NetstatError> {
    let v =
        u32::from_str_radix(hex, 16).map_err(|_| malformed(line, format!("{hex:?} is not an address")))?;
    Ok(Ipv4Addr::from(v.to_ne_bytes()))
}

/// Parse `/proc/net/route` (header line, then `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`);
/// routes that are not up are left out, and at most [`MAX_ROUTES`] are kept.
pub fn parse_routes(text: &str) -> Result<Vec<Route>, NetstatError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 8 {
            return Err(malformed(i + 1, format!("{} fields, expected at least 8", f.len())));
        }
        let flags =
            u32::from_str_radix(f[3], 16).map_err(|_| malformed(i + 1, format!("flags {:?}", f[3])))?;
        if flags & RTF_UP == 0 {
            continue;
        }
        let metric = f[6].parse().map_err(|_| malformed(i + 1, format!("metric {:?}", f[6])))?;
        out.push(Route {
            iface: f[0].to_string(),
            destination: route_addr(f[1], i + 1)?,
            mask: route_addr(f[7], i + 1)?,
            metric,
        });
        if out.len() >= MAX_ROUTES {
            break;
        }
    }
    Ok(out)
}

/// The interface the kernel's main table sends `ip` through: the longest matching prefix, then the lowest
/// metric. Loopback addresses leave by `lo` (their routes live in the local table, not in this file).
pub fn route_iface(routes: &[Route], ip: Ipv4Addr) -> Option<&str> {
    if ip.is_loopback() {
        return Some("lo");
    }
    let ip = u32::from(ip);
    routes
        .iter()
        .filter(|r| ip & u32::from(r.mask) == u32::from(r.destination) & u32::from(r.mask))
        .max_by(|a, b| {
            u32::from(a.mask).count_ones().cmp(&u32::from(b.mask).count_ones()).then(b.metric.cmp(&a.metric))
        })
        .map(|r| r.iface.as_str())
}

/// Read `/proc/net/route` under `root`.
pub fn read_routes(root: &Path) -> Result<Vec<Route>, NetstatError> {
    parse_routes(&read_capped(&root.join("proc/net/route"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(p: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/netstat").join(p);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Values read off the files by hand (`grep -A1 '^Tcp:'`, `grep -A1 '^TcpExt:'`).
    #[test]
    fn recorded_files_give_the_counters_read_by_hand() {
        let cases =
            [("node-exporter", 227, 54_915_039, Some(0)), ("this-machine", 445_127, 43_105_636, Some(0))];
        for (dir, retrans, out, lost) in cases {
            let c =
                tcp_counters(&testdata(&format!("{dir}/snmp")), Some(&testdata(&format!("{dir}/netstat"))))
                    .unwrap();
            assert_eq!(
                c,
                TcpCounters { retrans_segs: retrans, out_segs: out, lost_retransmit: lost },
                "{dir}"
            );
        }
        let snmp = parse(&testdata("node-exporter/snmp")).unwrap();
        assert_eq!(snmp.get("Tcp", "MaxConn"), Some(-1), "signed fields parse");
        assert_eq!(snmp.get("Udp", "InDatagrams"), Some(88_542));
        assert_eq!(snmp.get("Ip", "OutTransmits"), None, "older kernel: no such field");
        assert_eq!(
            parse(&testdata("this-machine/snmp")).unwrap().get("Ip", "OutTransmits"),
            Some(43_546_512)
        );
        let sections: Vec<String> = snmp.sections().map(String::from).collect();
        assert_eq!(sections, ["Icmp", "IcmpMsg", "Ip", "Tcp", "Udp", "UdpLite"]);
    }

    #[test]
    fn reading_a_recorded_tree_and_deltas() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("proc/net");
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("snmp"), testdata("this-machine/snmp")).unwrap();
        // netstat hidden (some containers): the snmp counters still come, the extra one is None.
        let before = read_tcp_counters(dir.path()).unwrap();
        assert_eq!(before.lost_retransmit, None);
        std::fs::write(net.join("netstat"), testdata("this-machine/netstat")).unwrap();
        let after =
            TcpCounters { retrans_segs: before.retrans_segs + 7, out_segs: before.out_segs + 1000, ..before };
        assert_eq!(after.delta(&before), TcpDelta { retrans_segs: 7, out_segs: 1000, lost_retransmit: 0 });
        assert_eq!(before.delta(&after), TcpDelta::default(), "a counter going backwards is no increase");
        assert_eq!(read_tcp_counters(dir.path()).unwrap().lost_retransmit, Some(0));
        std::fs::write(net.join("snmp"), "x".repeat(MAX_FILE_BYTES as usize + 1)).unwrap();
        assert!(matches!(read_tcp_counters(dir.path()), Err(NetstatError::TooLarge { .. })));
        assert!(matches!(read_tcp_counters(Path::new("/nonexistent")), Err(NetstatError::Io { .. })));
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let cases = [
            ("Tcp: A B\n", "without a value line"),
            ("Tcp: A B\nUdp: 1 2\n", "values of \"Udp\""),
            ("Tcp: A B\nTcp: 1\n", "2 names but 1 values"),
            ("Tcp: A B\nTcp: 1 x\n", "Tcp:B: \"x\" is not a number"),
            ("no colon here\n", "expected `Section: fields`"),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = tcp_counters("Tcp: OutSegs\nTcp: 5\n", None).unwrap_err();
        assert_eq!(e, NetstatError::Missing { section: "Tcp".into(), field: "RetransSegs".into() });
    }

    #[test]
    fn routes_pick_the_longest_prefix_then_the_lowest_metric() {
        let routes = parse_routes(&testdata("this-machine/route")).unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].destination, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(routes[1].mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(route_iface(&routes, Ipv4Addr::new(192, 0, 2, 9)), Some("eth0"));
        assert_eq!(route_iface(&routes, Ipv4Addr::new(10, 1, 1, 1)), Some("eth0"), "default route");
        assert_eq!(route_iface(&routes, Ipv4Addr::new(127, 0, 0, 3)), Some("lo"));
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
            eth0\t00000000\t0101010A\t0003\t0\t0\t100\t00000000\n\
            bond0\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\n\
            eth1\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
            eth2\t0000010A\t00000000\t0001\t0\t0\t5\t00FFFFFF\n\
            down0\t0002010A\t00000000\t0000\t0\t0\t0\t00FFFFFF\n";
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes.len(), 4, "the route that is not up is left out");
        assert_eq!(
            route_iface(&routes, Ipv4Addr::new(10, 1, 0, 7)),
            Some("eth1"),
            "/24 before /16, metric 0"
        );
        assert_eq!(route_iface(&routes, Ipv4Addr::new(10, 1, 2, 7)), Some("bond0"));
        assert_eq!(route_iface(&routes, Ipv4Addr::new(8, 8, 8, 8)), Some("eth0"));
        assert_eq!(route_iface(&[], Ipv4Addr::new(8, 8, 8, 8)), None);
        let e = parse_routes("h\neth0 zz 0 0003 0 0 0 0\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let many: String = std::iter::once("h\n".to_string())
            .chain((0..MAX_ROUTES + 5).map(|_| "e 00000000 0 0001 0 0 0 00000000\n".to_string()))
            .collect();
        assert_eq!(parse_routes(&many).unwrap().len(), MAX_ROUTES, "bounded");
    }
}
