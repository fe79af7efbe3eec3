//! Decoders for the numbers inside hardware error lines: a rule names one (`decode = "mca-status"`) and
//! the scanner runs it on the rule's named groups. A decoder adds readings (the decoded fields and, for
//! disks, `cause`: `media`, `link`, `controller`, `timeout`, `device` or `unknown`, because the repair
//! differs: replace the disk, reseat or replace the cable, replace the HBA/backplane), may change the
//! severity the status implies, and may drop a hit whose status is not a fault (an invalid MCA bank, a
//! SCSI unit attention, an NVMe "invalid field" the host caused).
//!
//! Sources of the encodings (read, not copied): Intel SDM vol. 3B ch. 16 (IA32_MCi_STATUS bits, MCA
//! compound error codes), the NVMe base specification (status code types and codes), libata's
//! `AC_ERR_*` masks and SATA SError bit names as the kernel prints them, SPC-4 sense keys and ASC codes,
//! and the SCSI midlayer's host byte values.

use std::collections::BTreeMap;

use serde::Deserialize;
use state_machines::Severity;

/// Which decoder a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decoder {
    /// Groups `status` (IA32_MCi_STATUS, hex) and optionally `bank`.
    McaStatus,
    /// Groups `sct` and `sc` (hex) of an NVMe completion status.
    NvmeStatus,
    /// libata: any of `emask`, `serr` (hex), `sflags` (SError names), `eflags` (error register names),
    /// `desc` (the text after `Emask`, e.g. `media error`), `fatal` (interface fatal error).
    Ata,
    /// SCSI: `key` (numeric `0x3` or text `Medium Error`), optional `asc`, `ascq` (hex).
    ScsiSense,
    /// SCSI midlayer result: `host` (`DID_TIME_OUT` or `0x03`).
    ScsiHost,
}

/// What a decoder concluded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Severity the decoded status implies (None: keep the rule's).
    pub severity: Option<Severity>,
    /// The status is not a fault: no finding.
    pub drop: bool,
    pub readings: Vec<(&'static str, String)>,
}

/// Causes in order of precedence when several members of one record disagree (a media error explains a
/// link reset that followed it, not the other way round).
pub const CAUSES: [&str; 6] = ["media", "link", "controller", "timeout", "device", "unknown"];

/// Rank of a cause (lower wins); unknown names rank last.
pub fn cause_rank(c: &str) -> usize {
    CAUSES.iter().position(|x| *x == c).unwrap_or(CAUSES.len())
}

fn hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Run decoder `d` on the groups a rule matched.
pub fn decode(d: Decoder, groups: &BTreeMap<String, String>) -> Decoded {
    fn get<'a>(m: &'a BTreeMap<String, String>, k: &str) -> Option<&'a str> {
        m.get(k).map(String::as_str)
    }
    let g = |k: &str| get(groups, k);
    match d {
        Decoder::McaStatus => mca_status(g("status").and_then(hex)),
        Decoder::NvmeStatus => nvme_status(g("sct").and_then(hex), g("sc").and_then(hex)),
        Decoder::Ata => ata(groups),
        Decoder::ScsiSense => scsi_sense(g("key"), g("asc").and_then(hex), g("ascq").and_then(hex)),
        Decoder::ScsiHost => scsi_host(g("host"), g("driver")),
    }
}

// ------------------------------------------------------------------------------------------ machine check

/// IA32_MCi_STATUS: VAL 63, OVER 62, UC 61, EN 60, MISCV 59, ADDRV 58, PCC 57; MCA error code 15:0.
fn mca_status(status: Option<u64>) -> Decoded {
    let Some(s) = status else {
        return Decoded::default();
    };
    let bit = |n: u32| s >> n & 1 == 1;
    if !bit(63) {
        // VAL clear: the bank holds no valid error.
        return Decoded { drop: true, ..Decoded::default() };
    }
    let (over, uc, en, pcc) = (bit(62), bit(61), bit(60), bit(57));
    let class = if pcc {
        "uncorrected, processor context corrupt"
    } else if uc {
        "uncorrected"
    } else {
        "corrected"
    };
    let severity = if uc && pcc {
        Severity::Fatal
    } else if uc {
        Severity::Error
    } else {
        Severity::Warning
    };
    let yn = |b: bool| if b { "1" } else { "0" }.to_string();
    Decoded {
        severity: Some(severity),
        drop: false,
        readings: vec![
            ("mca_class", class.to_string()),
            ("mca_error", mca_error_class(s & 0xffff).to_string()),
            ("mci_over", yn(over)),
            ("mci_uc", yn(uc)),
            ("mci_en", yn(en)),
            ("mci_pcc", yn(pcc)),
            ("mci_addrv", yn(bit(58))),
        ],
    }
}

/// The unit a (compound) MCA error code points at. Bit 12 (corrected-error filtering) is ignored.
pub fn mca_error_class(code: u64) -> &'static str {
    let c = code & !0x1000;
    match c {
        0 => "none",
        1 => "unclassified",
        2 => "microcode-rom-parity",
        3 => "external",
        4 => "frc",
        5 => "internal-parity",
        _ if c & 0xf800 == 0x0800 => "bus-interconnect",
        _ if c & 0xff00 == 0x0100 => "cache",
        _ if c & 0xff80 == 0x0080 => "memory-controller",
        _ if c & 0xfff0 == 0x0010 => "tlb",
        _ if c & 0xfc00 == 0x0400 => "internal",
        _ => "other",
    }
}

// ------------------------------------------------------------------------------------------------- NVMe

fn nvme_status(sct: Option<u64>, sc: Option<u64>) -> Decoded {
    let (Some(sct), Some(sc)) = (sct, sc) else {
        return Decoded::default();
    };
    use Severity::*;
    let (name, cause, sev): (&str, &str, Severity) = match (sct, sc) {
        (0, 0) => return Decoded { drop: true, ..Decoded::default() },
        (0, 0x4) => ("data transfer error", "link", Error),
        (0, 0x5) => ("aborted: power loss", "controller", Warning),
        (0, 0x6) => ("internal error", "controller", Error),
        (0, 0x7) => ("command abort requested", "timeout", Warning),
        (0, 0x82) => ("namespace not ready", "controller", Warning),
        (0, _) => ("generic command error", "command", Info),
        (1, _) => ("command specific error", "command", Info),
        (2, 0x80) => ("write fault", "media", Error),
        (2, 0x81) => ("unrecovered read error", "media", Error),
        (2, 0x82..=0x84) => ("end-to-end protection check error", "media", Error),
        (2, 0x85) => ("compare failure", "command", Info),
        (2, 0x86) => ("access denied", "command", Info),
        (2, 0x87) => ("deallocated or unwritten logical block", "command", Info),
        (2, _) => ("media and data integrity error", "media", Error),
        (3, 0x00) => ("internal path error", "link", Warning),
        (3, 0x60..=0x6f) => ("asymmetric namespace access error", "link", Warning),
        (3, 0x70) => ("controller pathing error", "link", Warning),
        (3, 0x71) => ("host pathing error", "link", Warning),
        (3, 0x72) => ("command aborted by host", "link", Warning),
        (3, _) => ("path related error", "link", Warning),
        (7, _) => ("vendor specific", "unknown", Warning),
        _ => ("reserved status code type", "unknown", Warning),
    };
    let readings = vec![
        ("nvme_status", name.to_string()),
        ("cause", if cause == "command" { "unknown" } else { cause }.to_string()),
    ];
    Decoded { severity: Some(sev), drop: false, readings }
}

// ---------------------------------------------------------------------------------------------- libata

/// libata `AC_ERR_*` bits, in the kernel's order.
const EMASK: [(u64, &str); 11] = [
    (0x1, "DEV"),
    (0x2, "HSM"),
    (0x4, "TIMEOUT"),
    (0x8, "MEDIA"),
    (0x10, "ATA_BUS"),
    (0x20, "HOST_BUS"),
    (0x40, "SYSTEM"),
    (0x80, "INVALID"),
    (0x100, "OTHER"),
    (0x200, "NODEV_HINT"),
    (0x400, "NCQ"),
];

/// SATA SError bits with the names the kernel prints (`SError: { ... }`).
const SERROR: [(u32, &str); 16] = [
    (0, "RecovData"),
    (1, "RecovComm"),
    (8, "UnrecovData"),
    (9, "Persist"),
    (10, "Proto"),
    (11, "HostInt"),
    (16, "PHYRdyChg"),
    (17, "PHYInt"),
    (18, "CommWake"),
    (19, "10B8B"),
    (20, "Dispar"),
    (21, "BadCRC"),
    (22, "Handshk"),
    (23, "LinkSeq"),
    (24, "TrStaTrns"),
    (25, "UnrecFIS"),
];

/// SError names that point at the cable, connector or PHY.
const LINK_SERROR: [&str; 11] = [
    "UnrecovData",
    "Persist",
    "Proto",
    "PHYInt",
    "10B8B",
    "Dispar",
    "BadCRC",
    "Handshk",
    "LinkSeq",
    "TrStaTrns",
    "UnrecFIS",
];

fn ata(groups: &BTreeMap<String, String>) -> Decoded {
    let g = |k: &str| groups.get(k).map(String::as_str);
    let mut r: Vec<(&'static str, String)> = Vec::new();
    let mut causes: Vec<&str> = Vec::new();
    if let Some(e) = g("emask").and_then(hex) {
        let names: Vec<&str> = EMASK.iter().filter(|(b, _)| e & b != 0).map(|(_, n)| *n).collect();
        if e & 0x8 != 0 {
            causes.push("media");
        }
        if e & 0x10 != 0 {
            causes.push("link");
        }
        if e & 0x60 != 0 {
            causes.push("controller");
        }
        if e & 0x4 != 0 {
            causes.push("timeout");
        }
        if e & 0x3 != 0 {
            causes.push("device");
        }
        r.push(("ata_emask", names.join(" ")));
    }
    let mut serr_names: Vec<String> = Vec::new();
    if let Some(s) = g("serr").and_then(hex) {
        serr_names.extend(SERROR.iter().filter(|(b, _)| s >> b & 1 == 1).map(|(_, n)| n.to_string()));
    }
    if let Some(flags) = g("sflags") {
        serr_names.extend(flags.split_whitespace().map(str::to_string));
    }
    if !serr_names.is_empty() {
        if serr_names.iter().any(|n| LINK_SERROR.iter().any(|l| l.eq_ignore_ascii_case(n))) {
            causes.push("link");
        }
        r.push(("ata_serror", serr_names.join(" ")));
    }
    if let Some(flags) = g("eflags") {
        let f: Vec<&str> = flags.split_whitespace().collect();
        if f.iter().any(|x| matches!(*x, "UNC" | "AMNF" | "IDNF" | "BBK")) {
            causes.push("media");
        }
        if f.contains(&"ICRC") {
            causes.push("link");
        }
        r.push(("ata_error", f.join(" ")));
    }
    if let Some(d) = g("desc") {
        match d {
            "media error" => causes.push("media"),
            "ATA bus error" => causes.push("link"),
            "host bus error" => causes.push("controller"),
            "timeout" => causes.push("timeout"),
            "device error" => causes.push("device"),
            _ => {}
        }
    }
    if g("fatal").is_some() {
        causes.push("link");
    }
    causes.sort_by_key(|c| cause_rank(c));
    let cause = causes.first().copied().unwrap_or("unknown");
    r.push(("cause", cause.to_string()));
    let severity = match cause {
        "media" => Some(Severity::Error),
        "link" => Some(Severity::Warning),
        _ => None,
    };
    Decoded { severity, drop: false, readings: r }
}

// ------------------------------------------------------------------------------------------------- SCSI

const SENSE_KEYS: [&str; 16] = [
    "No Sense",
    "Recovered Error",
    "Not Ready",
    "Medium Error",
    "Hardware Error",
    "Illegal Request",
    "Unit Attention",
    "Data Protect",
    "Blank Check",
    "Vendor Specific",
    "Copy Aborted",
    "Aborted Command",
    "Reserved",
    "Volume Overflow",
    "Miscompare",
    "Completed",
];

/// Cause an additional sense code points at, for codes that are evidence of a fault.
fn asc_cause(asc: u64) -> Option<&'static str> {
    match asc {
        0x0c | 0x11 | 0x14 | 0x31 | 0x32 => Some("media"),
        0x15 | 0x40 | 0x44 | 0x3e => Some("controller"),
        0x47 | 0x48 | 0x4b => Some("link"),
        _ => None,
    }
}

fn scsi_sense(key: Option<&str>, asc: Option<u64>, ascq: Option<u64>) -> Decoded {
    let Some(key) = key else {
        // `ASC=0x11 ASCQ=0x4` alone (the sense key is on another line of the record): a context reading
        // for fault codes, nothing for the rest (power-on reset, parameters changed, ...).
        return match asc.and_then(|a| asc_cause(a).map(|c| (a, c))) {
            Some((a, c)) => Decoded {
                severity: None,
                drop: false,
                readings: vec![
                    ("asc", format!("0x{a:02x}")),
                    ("ascq", format!("0x{:02x}", ascq.unwrap_or(0))),
                    ("cause", c.to_string()),
                ],
            },
            None => Decoded { drop: asc.is_some(), ..Decoded::default() },
        };
    };
    let k = match hex(key).filter(|_| key.trim().starts_with("0x")) {
        Some(n) => n as usize,
        None => match SENSE_KEYS.iter().position(|n| n.eq_ignore_ascii_case(key.trim())) {
            Some(i) => i,
            None => return Decoded::default(),
        },
    };
    if k >= SENSE_KEYS.len() {
        return Decoded::default();
    }
    use Severity::*;
    let (mut cause, mut sev): (&str, Option<Severity>) = match k {
        // No sense, illegal request (the host asked for something unsupported), unit attention (reset,
        // media change, mode parameters changed), blank check, miscompare, completed: not faults.
        // Not ready (an empty card reader: `Medium not present`) and data protect (write-protected media)
        // are states, not faults; a recovered error was recovered (unless it predicts failure, below).
        0 | 2 | 5 | 6 | 7 | 8 | 0xe | 0xf => return Decoded { drop: true, ..Decoded::default() },
        1 if asc != Some(0x5d) => return Decoded { drop: true, ..Decoded::default() },
        1 => ("media", Some(Info)),
        3 => ("media", Some(Error)),
        4 => ("controller", Some(Error)),
        0xb => ("link", Some(Warning)),
        _ => ("unknown", Some(Warning)),
    };
    let mut readings = vec![("sense_key", SENSE_KEYS[k].to_string())];
    if let Some(a) = asc {
        readings.push(("asc", format!("0x{a:02x}")));
        readings.push(("ascq", format!("0x{:02x}", ascq.unwrap_or(0))));
        if let Some(c) = asc_cause(a) {
            cause = c;
        }
        if a == 0x5d {
            // failure prediction threshold exceeded: the drive itself predicts its failure
            readings.push(("failure_prediction", "1".into()));
            sev = Some(Error);
        }
    }
    readings.push(("cause", cause.to_string()));
    Decoded { severity: sev, drop: false, readings }
}

/// SCSI midlayer host byte values (`DID_*`), as printed numerically by newer kernels.
const HOST_BYTES: [&str; 21] = [
    "DID_OK",
    "DID_NO_CONNECT",
    "DID_BUS_BUSY",
    "DID_TIME_OUT",
    "DID_BAD_TARGET",
    "DID_ABORT",
    "DID_PARITY",
    "DID_ERROR",
    "DID_RESET",
    "DID_BAD_INTR",
    "DID_PASSTHROUGH",
    "DID_SOFT_ERROR",
    "DID_IMM_RETRY",
    "DID_REQUEUE",
    "DID_TRANSPORT_DISRUPTED",
    "DID_TRANSPORT_FAILFAST",
    "DID_TARGET_FAILURE",
    "DID_NEXUS_FAILURE",
    "DID_ALLOC_FAILURE",
    "DID_MEDIUM_ERROR",
    "DID_TRANSPORT_MARGINAL",
];

fn scsi_host(host: Option<&str>, driver: Option<&str>) -> Decoded {
    let Some(h) = host else {
        return Decoded::default();
    };
    let name = if h.starts_with("0x") {
        match hex(h).and_then(|n| HOST_BYTES.get(n as usize)) {
            Some(n) => *n,
            None => return Decoded::default(),
        }
    } else {
        h
    };
    let cause = match name {
        // DID_OK with sense data: the sense lines of the record say what went wrong
        "DID_OK" if matches!(driver, Some("DRIVER_SENSE" | "0x08")) => {
            return Decoded { readings: vec![("scsi_host", name.to_string())], ..Decoded::default() };
        }
        "DID_OK" => return Decoded { drop: true, ..Decoded::default() },
        "DID_NO_CONNECT" | "DID_BAD_TARGET" => "device",
        "DID_TIME_OUT" => "timeout",
        "DID_PARITY"
        | "DID_TRANSPORT_DISRUPTED"
        | "DID_TRANSPORT_FAILFAST"
        | "DID_TRANSPORT_MARGINAL"
        | "DID_NEXUS_FAILURE" => "link",
        "DID_MEDIUM_ERROR" => "media",
        "DID_TARGET_FAILURE" => "device",
        _ => "controller",
    };
    let severity = (cause == "media").then_some(Severity::Error);
    Decoded {
        severity,
        drop: false,
        readings: vec![("scsi_host", name.to_string()), ("cause", cause.into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: Decoder, kv: &[(&str, &str)]) -> Decoded {
        let m: BTreeMap<String, String> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        decode(d, &m)
    }

    fn reading<'a>(d: &'a Decoded, k: &str) -> Option<&'a str> {
        d.readings.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn mca_status_bits_and_error_classes() {
        // real: "CPU 0: Machine Check: 0 Bank 4: a600000000020408" -> VAL UC ADDRV PCC, internal
        let d = run(Decoder::McaStatus, &[("status", "a600000000020408")]);
        assert_eq!(d.severity, Some(Severity::Fatal));
        assert_eq!(reading(&d, "mci_uc"), Some("1"));
        assert_eq!(reading(&d, "mci_pcc"), Some("1"));
        assert_eq!(reading(&d, "mca_error"), Some("internal"));
        // real: "Bank 6: cc59dec000041152" -> VAL OVER MISCV ADDRV, corrected, cache (filtered 0x1152)
        let d = run(Decoder::McaStatus, &[("status", "cc59dec000041152")]);
        assert_eq!(d.severity, Some(Severity::Warning));
        assert_eq!(reading(&d, "mca_class"), Some("corrected"));
        assert_eq!(reading(&d, "mci_over"), Some("1"));
        assert_eq!(reading(&d, "mca_error"), Some("cache"));
        // UC without PCC: recoverable
        let d = run(Decoder::McaStatus, &[("status", "bd80000000100134")]);
        assert_eq!((d.severity, reading(&d, "mca_error")), (Some(Severity::Error), Some("cache")));
        // STATUS values of mcelog's test inputs (andikleen/mcelog `input/dimm0`, `input/dmr_dcu_srar`):
        // a corrected memory-controller error and an uncorrected, recoverable (SRAR) cache error
        let d = run(Decoder::McaStatus, &[("status", "8800000000000080")]);
        assert_eq!(
            (d.severity, reading(&d, "mca_error")),
            (Some(Severity::Warning), Some("memory-controller"))
        );
        let d = run(Decoder::McaStatus, &[("status", "bd80000010100134")]);
        assert_eq!((d.severity, reading(&d, "mca_class")), (Some(Severity::Error), Some("uncorrected")));
        // VAL clear: no error in the bank
        assert!(run(Decoder::McaStatus, &[("status", "0000000000000000")]).drop);
        assert_eq!(mca_error_class(0x0090), "memory-controller");
        assert_eq!(mca_error_class(0x0e0b), "bus-interconnect");
        assert_eq!(mca_error_class(0x0011), "tlb");
        // garbage: nothing decoded, nothing dropped
        assert_eq!(run(Decoder::McaStatus, &[("status", "zz")]), Decoded::default());
    }

    #[test]
    fn nvme_status_types() {
        let d = run(Decoder::NvmeStatus, &[("sct", "0x0"), ("sc", "0x4")]);
        assert_eq!((reading(&d, "cause"), d.severity), (Some("link"), Some(Severity::Error)));
        let d = run(Decoder::NvmeStatus, &[("sct", "0x3"), ("sc", "0x71")]);
        assert_eq!(reading(&d, "nvme_status"), Some("host pathing error"));
        assert_eq!(reading(&d, "cause"), Some("link"));
        let d = run(Decoder::NvmeStatus, &[("sct", "0x2"), ("sc", "0x81")]);
        assert_eq!((reading(&d, "cause"), d.severity), (Some("media"), Some(Severity::Error)));
        let d = run(Decoder::NvmeStatus, &[("sct", "0x0"), ("sc", "0x2")]);
        assert_eq!(d.severity, Some(Severity::Info), "invalid field: the host's doing");
        assert!(run(Decoder::NvmeStatus, &[("sct", "0x0"), ("sc", "0x0")]).drop);
    }

    #[test]
    fn ata_masks_distinguish_link_media_and_controller() {
        // real: "exception Emask 0x12 SAct 0x2 SErr 0x1280500 action 0x6 frozen"
        let d = run(Decoder::Ata, &[("emask", "0x12"), ("serr", "0x1280500")]);
        assert_eq!(reading(&d, "cause"), Some("link"));
        assert_eq!(reading(&d, "ata_emask"), Some("HSM ATA_BUS"));
        assert_eq!(reading(&d, "ata_serror"), Some("UnrecovData Proto 10B8B BadCRC TrStaTrns"));
        // real: "res 41/40:... Emask 0x409 (media error)"
        let d = run(Decoder::Ata, &[("emask", "0x409"), ("desc", "media error")]);
        assert_eq!((reading(&d, "cause"), d.severity), (Some("media"), Some(Severity::Error)));
        let d = run(Decoder::Ata, &[("eflags", "UNC")]);
        assert_eq!(reading(&d, "cause"), Some("media"));
        let d = run(Decoder::Ata, &[("eflags", "ICRC ABRT")]);
        assert_eq!((reading(&d, "cause"), d.severity), (Some("link"), Some(Severity::Warning)));
        let d = run(Decoder::Ata, &[("emask", "0x4")]);
        assert_eq!(reading(&d, "cause"), Some("timeout"));
        let d = run(Decoder::Ata, &[("emask", "0x20")]);
        assert_eq!(reading(&d, "cause"), Some("controller"));
        let d = run(Decoder::Ata, &[("emask", "0x0"), ("serr", "0x0")]);
        assert_eq!(reading(&d, "cause"), Some("unknown"));
        let d = run(Decoder::Ata, &[("fatal", "interface fatal error")]);
        assert_eq!(reading(&d, "cause"), Some("link"));
    }

    #[test]
    fn scsi_sense_numeric_and_text() {
        let d = run(Decoder::ScsiSense, &[("key", "0x3")]);
        assert_eq!(reading(&d, "sense_key"), Some("Medium Error"));
        assert_eq!((reading(&d, "cause"), d.severity), (Some("media"), Some(Severity::Error)));
        let d = run(Decoder::ScsiSense, &[("key", "0x4"), ("asc", "0x44"), ("ascq", "0x0")]);
        assert_eq!((reading(&d, "cause"), d.severity), (Some("controller"), Some(Severity::Error)));
        assert!(run(Decoder::ScsiSense, &[("key", "0x1")]).drop, "recovered");
        assert!(run(Decoder::ScsiSense, &[("key", "Not Ready")]).drop, "an empty card reader");
        assert!(run(Decoder::ScsiSense, &[("key", "0x6")]).drop, "unit attention is not a fault");
        assert!(run(Decoder::ScsiSense, &[("key", "Illegal Request")]).drop);
        let d = run(Decoder::ScsiSense, &[("key", "Aborted Command"), ("asc", "0x47")]);
        assert_eq!(reading(&d, "cause"), Some("link"));
        let d = run(Decoder::ScsiSense, &[("key", "0x1"), ("asc", "0x5d")]);
        assert_eq!(d.severity, Some(Severity::Error), "failure prediction threshold exceeded");
        assert_eq!(run(Decoder::ScsiSense, &[("key", "0x1f")]), Decoded::default());
        // the ASC alone: a cause for fault codes, dropped for the rest
        let d = run(Decoder::ScsiSense, &[("asc", "0x11"), ("ascq", "0x04")]);
        assert_eq!((reading(&d, "cause"), d.severity, d.drop), (Some("media"), None, false));
        assert!(run(Decoder::ScsiSense, &[("asc", "0x29"), ("ascq", "0x00")]).drop, "power-on reset");
    }

    #[test]
    fn scsi_host_bytes() {
        let d = run(Decoder::ScsiHost, &[("host", "0x0b")]);
        assert_eq!(reading(&d, "scsi_host"), Some("DID_SOFT_ERROR"));
        let d = run(Decoder::ScsiHost, &[("host", "DID_TIME_OUT")]);
        assert_eq!(reading(&d, "cause"), Some("timeout"));
        assert!(run(Decoder::ScsiHost, &[("host", "0x00")]).drop);
        let d = run(Decoder::ScsiHost, &[("host", "DID_OK"), ("driver", "DRIVER_SENSE")]);
        assert!(!d.drop && reading(&d, "cause").is_none(), "sense data follows");
        assert_eq!(run(Decoder::ScsiHost, &[("host", "0x7f")]), Decoded::default());
    }
}
