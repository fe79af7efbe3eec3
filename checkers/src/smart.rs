//! SMART: run `smartctl --json=c -a -n standby` per device and turn its JSON into a [`SmartReport`].
//!
//! * Parsing ([`parse_report`], [`parse_scan`]) is pure and tolerant: every field is optional, unknown
//!   fields are ignored, a section with an unexpected shape is dropped instead of failing the document,
//!   and numbers are read leniently (NVMe counters are 128-bit and may exceed `u64`; they are kept as
//!   `u128`, saturating). Truncated JSON or binary garbage is a [`SmartError`], never a panic.
//! * The exit status is a bit mask (smartctl(8) "RETURN VALUES"): bits 0-2 say the *probe* failed
//!   (command line, device open, a SMART command), not the disk; bit 1 under `-n standby` may just mean
//!   the disk sleeps. Bits 3-7 are evidence about the disk and feed [`crate::scoring`].
//! * Values that cannot be true (a raw value `"lots"` or -1, a temperature of -99999999999 C, 1e308
//!   power-on hours) are not silently dropped: they make the report a [`ProbeProblem::Failed`] naming them,
//!   so the grade is UNKNOWN, never GOOD ([`implausible_values`]).
//! * A document without the `smartctl` section (some tools strip it) is accepted when it carries device
//!   data (attributes, NVMe or SCSI logs, `smart_status`); only a document with none of them is refused.
//! * [`SmartProbe`] is the IO edge: a per-device timeout (smartctl can hang in D state on a dying disk;
//!   the hang is itself evidence), never two probes on one device at once, discovery with `--scan-open`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::probe::{self, RunLimits};
use crate::scoring::Reading;

/// Largest smartctl output we accept. `-a` on a SAS disk with long logs is ~50 KiB; `-x` ~200 KiB.
pub const MAX_SMARTCTL_OUTPUT: usize = 2 * 1024 * 1024;
/// Default per-device timeout. A healthy disk answers `-a` in well under a second; a dying one can make
/// smartctl wait for the kernel's SCSI error handler (tens of seconds per command).
pub const DEFAULT_SMART_TIMEOUT: Duration = Duration::from_secs(30);
/// Most devices one scan may return (a large JBOD has ~100; more is a broken scan).
pub const MAX_SCAN_DEVICES: usize = 1024;

/// smartctl exit-status bits (smartctl(8)).
pub mod bits {
    pub const CMDLINE: u8 = 1 << 0;
    pub const OPEN_FAILED: u8 = 1 << 1;
    pub const COMMAND_FAILED: u8 = 1 << 2;
    pub const DISK_FAILING: u8 = 1 << 3;
    pub const PREFAIL_NOW: u8 = 1 << 4;
    pub const PREFAIL_PAST: u8 = 1 << 5;
    pub const ERROR_LOG: u8 = 1 << 6;
    pub const SELF_TEST_ERRORS: u8 = 1 << 7;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmartError {
    #[error("smartctl output is not valid JSON (truncated or garbage): {0}")]
    BadJson(String),
    #[error("JSON but not a smartctl document (no \"smartctl\" section and no device data)")]
    NotSmartctl,
    #[error("this is `smartctl --scan` output (a device list), not a report about one device")]
    ScanOutput,
}

// ---------------------------------------------------------------- tolerant serde helpers

/// Deserialize any section leniently: a value of an unexpected shape becomes `None` instead of failing
/// the whole document (smartctl changes field shapes between versions, e.g. `smart_support`).
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

/// Read an unsigned counter from a number (any size: 128-bit NVMe counters arrive as floats when they
/// exceed u64), a numeric string, or anything else (-> None). Never fails.
fn counter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(value_to_u128(&v))
}

fn value_to_u128(v: &Value) -> Option<u128> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u128::from(u))
            } else if let Some(i) = n.as_i64() {
                (i >= 0).then_some(i as u128)
            } else {
                n.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u128)
            }
        }
        Value::String(s) => s.trim().parse::<u128>().ok(),
        _ => None,
    }
}

fn signed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

// ---------------------------------------------------------------- raw smartctl JSON (tolerant)

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDoc {
    #[serde(deserialize_with = "lenient")]
    smartctl: Option<RawSmartctl>,
    #[serde(deserialize_with = "lenient")]
    device: Option<RawDevice>,
    #[serde(deserialize_with = "lenient")]
    model_name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    model_family: Option<String>,
    #[serde(deserialize_with = "lenient")]
    serial_number: Option<String>,
    #[serde(deserialize_with = "lenient")]
    firmware_version: Option<String>,
    #[serde(deserialize_with = "lenient")]
    user_capacity: Option<RawCapacity>,
    #[serde(deserialize_with = "lenient")]
    smart_status: Option<RawSmartStatus>,
    #[serde(deserialize_with = "lenient")]
    ata_smart_attributes: Option<RawAtaAttrs>,
    #[serde(deserialize_with = "lenient")]
    ata_smart_error_log: Option<RawAtaErrorLog>,
    #[serde(deserialize_with = "lenient")]
    ata_smart_self_test_log: Option<RawAtaSelfTestLog>,
    #[serde(deserialize_with = "lenient")]
    ata_smart_data: Option<RawAtaSmartData>,
    #[serde(deserialize_with = "lenient")]
    nvme_smart_health_information_log: Option<RawNvmeHealth>,
    #[serde(deserialize_with = "lenient")]
    nvme_self_test_log: Option<RawNvmeSelfTestLog>,
    #[serde(deserialize_with = "counter")]
    scsi_grown_defect_list: Option<u128>,
    #[serde(deserialize_with = "lenient")]
    scsi_error_counter_log: Option<BTreeMap<String, RawScsiCounters>>,
    #[serde(deserialize_with = "lenient")]
    temperature: Option<RawTemperature>,
    #[serde(deserialize_with = "lenient")]
    power_on_time: Option<RawPowerOn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSmartctl {
    #[serde(deserialize_with = "counter")]
    exit_status: Option<u128>,
    #[serde(deserialize_with = "lenient")]
    messages: Option<Vec<RawMessage>>,
    #[serde(deserialize_with = "lenient")]
    argv: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMessage {
    string: Option<String>,
    severity: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
struct RawDevice {
    name: Option<String>,
    info_name: Option<String>,
    #[serde(rename = "type")]
    dev_type: Option<String>,
    protocol: Option<String>,
    open_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCapacity {
    #[serde(deserialize_with = "counter")]
    bytes: Option<u128>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSmartStatus {
    passed: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAtaAttrs {
    #[serde(deserialize_with = "lenient")]
    table: Option<Vec<RawAtaAttr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAtaAttr {
    #[serde(deserialize_with = "counter")]
    id: Option<u128>,
    #[serde(deserialize_with = "lenient")]
    name: Option<String>,
    #[serde(deserialize_with = "counter")]
    value: Option<u128>,
    #[serde(deserialize_with = "counter")]
    worst: Option<u128>,
    #[serde(deserialize_with = "counter")]
    thresh: Option<u128>,
    #[serde(deserialize_with = "lenient")]
    when_failed: Option<String>,
    #[serde(deserialize_with = "lenient")]
    flags: Option<RawAttrFlags>,
    #[serde(deserialize_with = "lenient")]
    raw: Option<RawAttrRaw>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAttrFlags {
    prefailure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAttrRaw {
    #[serde(deserialize_with = "counter")]
    value: Option<u128>,
    #[serde(deserialize_with = "lenient")]
    string: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAtaErrorLog {
    #[serde(deserialize_with = "lenient")]
    summary: Option<RawCount>,
    #[serde(deserialize_with = "lenient")]
    extended: Option<RawCount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawCount {
    #[serde(deserialize_with = "counter")]
    count: Option<u128>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAtaSelfTestLog {
    #[serde(deserialize_with = "lenient")]
    standard: Option<RawSelfTestTable>,
    #[serde(deserialize_with = "lenient")]
    extended: Option<RawSelfTestTable>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSelfTestTable {
    #[serde(deserialize_with = "lenient")]
    table: Option<Vec<RawSelfTestEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSelfTestEntry {
    #[serde(deserialize_with = "lenient")]
    status: Option<RawSelfTestStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSelfTestStatus {
    passed: Option<bool>,
    string: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAtaSmartData {
    #[serde(deserialize_with = "lenient")]
    self_test: Option<RawSelfTestEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawNvmeHealth {
    #[serde(deserialize_with = "counter")]
    critical_warning: Option<u128>,
    #[serde(deserialize_with = "signed")]
    temperature: Option<i64>,
    #[serde(deserialize_with = "counter")]
    available_spare: Option<u128>,
    #[serde(deserialize_with = "counter")]
    available_spare_threshold: Option<u128>,
    #[serde(deserialize_with = "counter")]
    percentage_used: Option<u128>,
    #[serde(deserialize_with = "counter")]
    media_errors: Option<u128>,
    #[serde(deserialize_with = "counter")]
    num_err_log_entries: Option<u128>,
    #[serde(deserialize_with = "counter")]
    data_units_written: Option<u128>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawNvmeSelfTestLog {
    #[serde(deserialize_with = "lenient")]
    table: Option<Vec<RawNvmeSelfTestEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawNvmeSelfTestEntry {
    #[serde(deserialize_with = "lenient")]
    self_test_result: Option<RawValueString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawValueString {
    #[serde(deserialize_with = "counter")]
    value: Option<u128>,
    string: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawScsiCounters {
    #[serde(deserialize_with = "counter")]
    total_uncorrected_errors: Option<u128>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawTemperature {
    #[serde(deserialize_with = "signed")]
    current: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPowerOn {
    #[serde(deserialize_with = "counter")]
    hours: Option<u128>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawScan {
    #[serde(deserialize_with = "lenient")]
    smartctl: Option<RawSmartctl>,
    #[serde(deserialize_with = "lenient")]
    devices: Option<Vec<RawDevice>>,
}

// ---------------------------------------------------------------- the domain view

/// One ATA attribute, as far as scoring cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtaAttribute {
    pub id: u32,
    pub name: String,
    pub value: Option<u64>,
    pub thresh: Option<u64>,
    pub raw: Option<u128>,
    /// `""`, `"now"` or `"past"` (smartctl's WHEN_FAILED column).
    pub when_failed: String,
    pub prefailure: bool,
}

/// NVMe health log fields used by scoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvmeHealth {
    pub critical_warning: Option<u128>,
    pub available_spare: Option<u128>,
    pub available_spare_threshold: Option<u128>,
    pub percentage_used: Option<u128>,
    pub media_errors: Option<u128>,
    pub num_err_log_entries: Option<u128>,
    pub data_units_written: Option<u128>,
}

/// Why a probe gave no (or only partial) data. These are facts about the probe, not the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeProblem {
    /// smartctl did not finish within the timeout and was killed; on a dying disk this is itself
    /// evidence (the scorer has an item for it).
    Hung { timeout_ms: u64, unreaped: bool },
    /// A previous probe of the same device is still stuck (never two probes on one device at once).
    StillBusy,
    /// smartctl could not be started, or its output was not a smartctl document.
    Failed(String),
    /// Exit bit 0/1: command line or device open failed; with `-n standby` the disk may just be asleep.
    OpenFailed { reason: String, maybe_standby: bool },
}

impl std::fmt::Display for ProbeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeProblem::Hung { timeout_ms, unreaped } => write!(
                f,
                "smartctl hung for {timeout_ms} ms and was killed{}",
                if *unreaped { " (still unkillable: stuck in D state)" } else { "" }
            ),
            ProbeProblem::StillBusy => f.write_str("an earlier smartctl on this device is still stuck"),
            ProbeProblem::Failed(r) => write!(f, "probe failed: {r}"),
            ProbeProblem::OpenFailed { reason, maybe_standby: true } => write!(
                f,
                "device open failed ({reason}); with -n standby this may mean the disk is in standby (spun down)"
            ),
            ProbeProblem::OpenFailed { reason, maybe_standby: false } => {
                write!(f, "device open failed: {reason}")
            }
        }
    }
}

/// Everything the scorer and the CLI need from one smartctl run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmartReport {
    /// Device path as smartctl names it (`/dev/sda`, `/dev/bus/0`).
    pub device: String,
    /// smartctl device type (`sat`, `nvme`, `scsi`, `megaraid,3`).
    pub dev_type: String,
    /// `ATA`, `NVMe` or `SCSI`.
    pub protocol: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub capacity_bytes: Option<u128>,
    pub exit_status: u8,
    pub passed: Option<bool>,
    pub attributes: Vec<AtaAttribute>,
    pub ata_error_count: Option<u128>,
    /// Self-test entries that did not pass (ATA standard/extended log, NVMe log).
    pub self_tests_failed: u32,
    /// The most recent self-test did not pass.
    pub last_self_test_failed: bool,
    pub nvme: Option<NvmeHealth>,
    pub scsi_grown_defects: Option<u128>,
    pub scsi_uncorrected: Option<u128>,
    pub temperature_c: Option<i64>,
    pub power_on_hours: Option<u128>,
    /// smartctl's own error messages.
    pub messages: Vec<String>,
    /// Set when the probe gave no or partial data.
    pub problem: Option<ProbeProblem>,
}

/// Parse one `smartctl --json` document. `device_hint` names the device when the document lacks one.
pub fn parse_report(bytes: &[u8], device_hint: &str) -> Result<SmartReport, SmartError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| SmartError::BadJson(short(&e.to_string())))?;
    // smartctl writes one object; serde would also take an array as the document's fields in order.
    if !value.is_object() {
        return Err(SmartError::NotSmartctl);
    }
    let implausible = implausible_values(&value);
    let doc: RawDoc =
        serde_json::from_value(value).map_err(|e| SmartError::BadJson(short(&e.to_string())))?;
    let has_data = doc.ata_smart_attributes.is_some()
        || doc.nvme_smart_health_information_log.is_some()
        || doc.scsi_grown_defect_list.is_some()
        || doc.scsi_error_counter_log.is_some()
        || doc.smart_status.is_some();
    let ctl = match doc.smartctl {
        Some(c) => c,
        // A document stripped of its `smartctl` section (exit status and messages unknown) is still
        // evidence about the disk.
        None if has_data => RawSmartctl::default(),
        None => return Err(SmartError::NotSmartctl),
    };
    let is_scan = ctl.argv.as_ref().is_some_and(|a| a.iter().any(|x| x == "--scan" || x == "--scan-open"));
    if is_scan && doc.device.is_none() {
        return Err(SmartError::ScanOutput);
    }
    let exit_status = ctl.exit_status.map(|v| (v & 0xff) as u8).unwrap_or(0);
    let messages: Vec<String> = ctl
        .messages
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.string.map(|s| (m.severity.unwrap_or_default(), s)))
        .map(|(sev, s)| if sev.is_empty() { s } else { format!("{sev}: {s}") })
        .collect();
    let dev = doc.device.unwrap_or_default();
    // A failed run has no "device" section; its argv still names the device. A name that leaves no object
    // name ("", "/dev/") names nothing: the next source is asked (the hint is the scan's device).
    let argv_dev = ctl
        .argv
        .as_ref()
        .and_then(|a| a.iter().rev().find(|x| x.starts_with("/dev/") && names_a_disk(x)).cloned());
    let mut r = SmartReport {
        device: dev
            .name
            .clone()
            .filter(|n| names_a_disk(n))
            .or(argv_dev)
            .unwrap_or_else(|| device_hint.to_string()),
        dev_type: dev.dev_type.clone().unwrap_or_default(),
        protocol: dev.protocol.clone().unwrap_or_default(),
        model: doc.model_name.or(doc.model_family),
        serial: doc.serial_number,
        firmware: doc.firmware_version,
        capacity_bytes: doc.user_capacity.and_then(|c| c.bytes),
        exit_status,
        passed: doc.smart_status.and_then(|s| s.passed),
        messages,
        ..SmartReport::default()
    };
    for a in doc.ata_smart_attributes.and_then(|t| t.table).unwrap_or_default() {
        let Some(id) = a.id.and_then(|i| u32::try_from(i).ok()) else { continue };
        r.attributes.push(AtaAttribute {
            id,
            name: a.name.unwrap_or_default(),
            value: a.value.and_then(|v| u64::try_from(v).ok()),
            thresh: a.thresh.and_then(|v| u64::try_from(v).ok()),
            raw: a.raw.and_then(|raw| raw.value.or_else(|| leading_number(raw.string.as_deref()))),
            when_failed: a.when_failed.unwrap_or_default(),
            prefailure: a.flags.and_then(|f| f.prefailure).unwrap_or(false),
        });
    }
    r.ata_error_count = doc
        .ata_smart_error_log
        .and_then(|l| l.extended.and_then(|e| e.count).or_else(|| l.summary.and_then(|s| s.count)));
    if let Some(log) = doc.ata_smart_self_test_log {
        let mut first = true;
        for table in [log.extended, log.standard].into_iter().flatten() {
            let entries = table.table.unwrap_or_default();
            for (i, e) in entries.iter().enumerate() {
                let failed = e.status.as_ref().and_then(|s| s.passed) == Some(false);
                if failed {
                    r.self_tests_failed += 1;
                    if i == 0 && first {
                        r.last_self_test_failed = true;
                    }
                }
            }
            if !entries.is_empty() {
                first = false;
            }
        }
    }
    if let Some(st) = doc.ata_smart_data.and_then(|d| d.self_test).and_then(|s| s.status)
        && st.passed == Some(false)
    {
        r.last_self_test_failed = true;
    }
    if let Some(log) = doc.nvme_self_test_log {
        for (i, e) in log.table.unwrap_or_default().iter().enumerate() {
            // NVMe result codes: 0 = completed without error, 0xF = entry not used; 1..=9 are aborts
            // and failures (NVMe base spec, Get Log Page 06h). Aborts by the host (1, 2) are not failures.
            let code = e.self_test_result.as_ref().and_then(|s| s.value);
            if matches!(code, Some(c) if (3..=9).contains(&c)) {
                r.self_tests_failed += 1;
                if i == 0 {
                    r.last_self_test_failed = true;
                }
            }
        }
    }
    r.nvme = doc.nvme_smart_health_information_log.map(|h| NvmeHealth {
        critical_warning: h.critical_warning,
        available_spare: h.available_spare,
        available_spare_threshold: h.available_spare_threshold,
        percentage_used: h.percentage_used,
        media_errors: h.media_errors,
        num_err_log_entries: h.num_err_log_entries,
        data_units_written: h.data_units_written,
    });
    r.temperature_c = doc.temperature.and_then(|t| t.current);
    r.power_on_hours = doc.power_on_time.and_then(|p| p.hours);
    r.scsi_grown_defects = doc.scsi_grown_defect_list;
    r.scsi_uncorrected = doc
        .scsi_error_counter_log
        .map(|m| m.values().filter_map(|c| c.total_uncorrected_errors).fold(0u128, u128::saturating_add));
    if !implausible.is_empty() {
        r.problem = Some(ProbeProblem::Failed(format!(
            "implausible values (the report cannot be trusted): {}",
            implausible.join(", ")
        )));
    }
    if exit_status & (bits::CMDLINE | bits::OPEN_FAILED) != 0 {
        let reason = r
            .messages
            .iter()
            .find(|m| m.starts_with("error"))
            .or(r.messages.first())
            .cloned()
            .or(dev.open_error)
            .unwrap_or_else(|| format!("smartctl exit status {exit_status}"));
        // smartctl -n standby exits with bit 1 and says "Device is in STANDBY mode"; a message-less open
        // failure may be the same. An explicit reason (permission denied, no such device) is not.
        let lower = reason.to_ascii_lowercase();
        let standby = lower.contains("standby") || lower.contains("sleep") || r.messages.is_empty();
        r.problem = Some(if exit_status & bits::CMDLINE != 0 {
            ProbeProblem::Failed(format!("smartctl rejected its command line: {reason}"))
        } else {
            ProbeProblem::OpenFailed { maybe_standby: standby, reason }
        });
    }
    Ok(r)
}

/// Most implausible fields named in one problem (the rest are counted).
const MAX_IMPLAUSIBLE_SHOWN: usize = 8;
/// Plausible ranges: a drive temperature in C (sensors report -40..125; beyond is a broken sensor or a
/// corrupted report), power-on hours (100 years), an ATA normalised value (one byte).
const TEMP_RANGE_C: std::ops::RangeInclusive<i64> = -60..=200;
const MAX_POWER_ON_HOURS: u64 = 100 * 365 * 24;

/// Fields of a smartctl document whose values cannot be true: present, but not a number of the kind the
/// field holds or outside any physically possible range. Absent fields are fine (absence is not evidence).
pub fn implausible_values(v: &Value) -> Vec<String> {
    let mut bad: Vec<String> = Vec::new();
    let counter_ok = |x: &Value| match x {
        Value::Number(n) => {
            n.as_u64().is_some() || n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0 && f.fract() == 0.0)
        }
        _ => false,
    };
    let u64_le = |x: &Value, max: u64| x.as_u64().is_some_and(|n| n <= max);
    if let Some(table) = v.pointer("/ata_smart_attributes/table").and_then(Value::as_array) {
        for a in table {
            let id = a.get("id").map_or_else(|| "?".to_string(), |i| i.to_string());
            if let Some(raw) = a.pointer("/raw/value")
                && raw.as_u64().is_none()
            {
                bad.push(format!("attribute {id} raw value {raw}"));
            }
            for k in ["value", "worst", "thresh"] {
                if let Some(x) = a.get(k)
                    && !u64_le(x, 255)
                {
                    bad.push(format!("attribute {id} {k} {x}"));
                }
            }
        }
    }
    if let Some(t) = v.pointer("/temperature/current")
        && !t.as_i64().is_some_and(|c| TEMP_RANGE_C.contains(&c))
    {
        bad.push(format!("temperature {t}"));
    }
    if let Some(h) = v.pointer("/power_on_time/hours")
        && !u64_le(h, MAX_POWER_ON_HOURS)
    {
        bad.push(format!("power-on hours {h}"));
    }
    if let Some(n) = v.get("nvme_smart_health_information_log").and_then(Value::as_object) {
        for (k, x) in n {
            let ok = match k.as_str() {
                "temperature" => x.as_i64().is_some_and(|c| TEMP_RANGE_C.contains(&c)),
                "temperature_sensors" => x.is_array(),
                "percentage_used" | "available_spare" | "available_spare_threshold" | "critical_warning" => {
                    u64_le(x, 255)
                }
                "power_on_hours" => u64_le(x, MAX_POWER_ON_HOURS),
                _ => !x.is_number() || counter_ok(x),
            };
            if !ok {
                bad.push(format!("nvme {k} {x}"));
            }
        }
    }
    if let Some(g) = v.get("scsi_grown_defect_list")
        && !counter_ok(g)
    {
        bad.push(format!("scsi_grown_defect_list {g}"));
    }
    if bad.len() > MAX_IMPLAUSIBLE_SHOWN {
        let more = bad.len() - MAX_IMPLAUSIBLE_SHOWN;
        bad.truncate(MAX_IMPLAUSIBLE_SHOWN);
        bad.push(format!("{more} more"));
    }
    bad.into_iter().map(|b| short(&b)).collect()
}

fn leading_number(s: Option<&str>) -> Option<u128> {
    let s = s?.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

impl SmartReport {
    /// A report that carries only a probe problem (no data).
    pub fn failed(device: &str, problem: ProbeProblem) -> Self {
        SmartReport { device: device.to_string(), problem: Some(problem), ..Default::default() }
    }

    /// Whether the probe produced data worth scoring. A hang is scored (it is evidence); an open
    /// failure or garbage is not (the grade is UNKNOWN).
    pub fn has_data(&self) -> bool {
        match &self.problem {
            None => true,
            Some(ProbeProblem::Hung { .. } | ProbeProblem::StillBusy) => true,
            Some(_) => false,
        }
    }

    /// Notes about a partial probe that still gave data (exit bit 2: some SMART command failed, e.g. a
    /// USB bridge that does not pass a log page through). Never a disk verdict.
    pub fn probe_note(&self) -> Option<String> {
        (self.exit_status & bits::COMMAND_FAILED != 0 && self.problem.is_none()).then(|| {
            "some SMART command failed (exit bit 2): the data may be partial; this is not a disk verdict"
                .into()
        })
    }

    pub fn attribute(&self, id: u32) -> Option<&AtaAttribute> {
        self.attributes.iter().find(|a| a.id == id)
    }

    /// A name usable in an object id: `sda`, `nvme0n1` for controller `/dev/nvme0`, `bus-0@megaraid-3`.
    pub fn object_name(&self) -> String {
        object_name(&self.device, &self.dev_type)
    }

    /// The readings this report contributes to disk scoring (see `checkers/README.md`).
    pub fn readings(&self) -> Vec<(Reading, f64)> {
        let mut out = Vec::new();
        let f = |v: u128| v as f64;
        match &self.problem {
            Some(ProbeProblem::Hung { .. } | ProbeProblem::StillBusy) => {
                out.push((Reading::ProbeHung, 1.0));
                return out;
            }
            Some(_) => return out,
            None => {}
        }
        let failing = self.exit_status & bits::DISK_FAILING != 0 || self.passed == Some(false);
        out.push((Reading::SmartFailing, if failing { 1.0 } else { 0.0 }));
        let now = self.attributes.iter().filter(|a| a.when_failed == "now").count();
        let now = if now == 0 && self.exit_status & bits::PREFAIL_NOW != 0 { 1 } else { now };
        let past = self.attributes.iter().filter(|a| a.when_failed == "past").count();
        let past = if past == 0 && self.exit_status & bits::PREFAIL_PAST != 0 { 1 } else { past };
        out.push((Reading::AttrFailingNow, now as f64));
        out.push((Reading::AttrFailedPast, past as f64));
        for (id, reading) in [
            (5, Reading::Reallocated),
            (197, Reading::Pending),
            (198, Reading::OfflineUncorrectable),
            (187, Reading::ReportedUncorrect),
            (199, Reading::UdmaCrc),
        ] {
            // Vendors pack extra data into the upper raw bytes of some attributes; the count is in the
            // low 32 bits for these four on every drive family we have seen.
            if let Some(raw) = self.attribute(id).and_then(|a| a.raw) {
                out.push((reading, f(raw & 0xffff_ffff)));
            }
        }
        if let Some(c) = self.ata_error_count {
            out.push((Reading::AtaErrorLog, f(c)));
        }
        let st_failed = self.last_self_test_failed || self.exit_status & bits::SELF_TEST_ERRORS != 0;
        out.push((Reading::SelfTestFailed, if st_failed { 1.0 } else { 0.0 }));
        if let Some(n) = &self.nvme {
            if let Some(cw) = n.critical_warning {
                out.push((Reading::NvmeCriticalWarning, f(cw)));
                for (bit, reading) in [
                    (0x01, Reading::NvmeSpareLow),
                    (0x02, Reading::NvmeTemperature),
                    (0x04, Reading::NvmeReliabilityDegraded),
                    (0x08, Reading::NvmeReadOnly),
                    (0x10, Reading::NvmeBackupFailed),
                ] {
                    out.push((reading, if cw & bit != 0 { 1.0 } else { 0.0 }));
                }
            }
            if let Some(m) = n.media_errors {
                out.push((Reading::NvmeMediaErrors, f(m)));
            }
            if let Some(e) = n.num_err_log_entries {
                out.push((Reading::NvmeErrorLogEntries, f(e)));
            }
            if let (Some(s), Some(t)) = (n.available_spare, n.available_spare_threshold) {
                out.push((Reading::NvmeSpareMargin, s as f64 - t as f64));
            }
            if let Some(p) = n.percentage_used {
                out.push((Reading::NvmePercentageUsed, f(p)));
            }
        }
        if let Some(g) = self.scsi_grown_defects {
            out.push((Reading::ScsiGrownDefects, f(g)));
        }
        if let Some(u) = self.scsi_uncorrected {
            out.push((Reading::ScsiUncorrected, f(u)));
        }
        out
    }
}

/// See [`SmartReport::object_name`].
pub fn object_name(device: &str, dev_type: &str) -> String {
    let base = device.strip_prefix("/dev/").unwrap_or(device);
    let mut name: String = base.chars().map(|c| if c == '/' { '-' } else { c }).collect();
    // smartctl addresses NVMe controllers (`/dev/nvme0`); the block device (and diskstats) is the
    // namespace `nvme0n1`. A disk object is the slot the kernel shows, so use the namespace.
    if let Some(rest) = name.strip_prefix("nvme")
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        name.push_str("n1");
    }
    if dev_type.contains(',') {
        // RAID pass-through: several disks share one device path, the type tells them apart.
        name.push('@');
        name.push_str(&dev_type.replace([',', '+'], "-"));
    }
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-:@+".contains(c) { c } else { '_' })
        .take(state_machines::id::MAX_NAME_LEN)
        .collect()
}

/// Whether a device path leaves an object name (`""` and `"/dev/"` do not).
fn names_a_disk(device: &str) -> bool {
    !object_name(device, "").is_empty()
}

/// One device from `smartctl --scan-open --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanDevice {
    pub name: String,
    pub dev_type: String,
    pub protocol: String,
    /// `--scan-open` could not open the device (permission, gone); probing it would fail the same way.
    pub open_error: Option<String>,
}

/// Parse `smartctl --scan[-open] --json` output. Devices without a name, or with one that leaves no object
/// name, are skipped.
pub fn parse_scan(bytes: &[u8]) -> Result<Vec<ScanDevice>, SmartError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| SmartError::BadJson(short(&e.to_string())))?;
    if !value.is_object() {
        return Err(SmartError::NotSmartctl);
    }
    let doc: RawScan =
        serde_json::from_value(value).map_err(|e| SmartError::BadJson(short(&e.to_string())))?;
    if doc.smartctl.is_none() && doc.devices.is_none() {
        return Err(SmartError::NotSmartctl);
    }
    Ok(doc
        .devices
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| {
            Some(ScanDevice {
                name: d.name.filter(|n| names_a_disk(n))?,
                dev_type: d.dev_type.unwrap_or_default(),
                protocol: d.protocol.unwrap_or_default(),
                open_error: d.open_error,
            })
        })
        .take(MAX_SCAN_DEVICES)
        .collect())
}

// ---------------------------------------------------------------- the probe (IO edge)

/// Runs smartctl. Cheap to clone; clones share the set of devices with a probe in flight.
#[derive(Clone)]
pub struct SmartProbe {
    pub smartctl: PathBuf,
    pub timeout: Duration,
    /// Devices whose smartctl is still running (stuck in D state after a kill). The receiver fires when
    /// the stuck process is finally reaped.
    busy: Arc<Mutex<BTreeMap<String, Busy>>>,
}

/// Why a device is in the busy set.
enum Busy {
    /// A probe is running now.
    Running,
    /// A killed smartctl could not be reaped; the receiver fires (or disconnects) once it is.
    Stuck(Receiver<()>),
}

impl SmartProbe {
    pub fn new(smartctl: PathBuf, timeout: Duration) -> Self {
        SmartProbe { smartctl, timeout, busy: Arc::default() }
    }

    fn limits(&self) -> RunLimits {
        RunLimits { timeout: self.timeout, max_stdout: MAX_SMARTCTL_OUTPUT, max_stderr: 64 * 1024 }
    }

    /// Discover devices with `smartctl --scan-open --json=c`.
    pub fn scan(&self) -> Result<Vec<ScanDevice>, ProbeProblem> {
        let mut cmd = Command::new(&self.smartctl);
        cmd.args(["--scan-open", "--json=c"]);
        let out = probe::run_bounded(cmd, self.limits()).map_err(|e| ProbeProblem::Failed(e.to_string()))?;
        if out.timed_out {
            return Err(ProbeProblem::Hung { timeout_ms: ms(self.timeout), unreaped: out.unreaped });
        }
        parse_scan(&out.stdout).map_err(|e| ProbeProblem::Failed(e.to_string()))
    }

    /// Probe one device. Never fails: problems are in [`SmartReport::problem`].
    pub fn probe(&self, dev: &ScanDevice) -> SmartReport {
        let key = format!("{} {}", dev.name, dev.dev_type);
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            let still_busy = match busy.get(&key) {
                None => false,
                Some(Busy::Running) => true,
                Some(Busy::Stuck(rx)) => matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            };
            if still_busy {
                return SmartReport::failed(&dev.name, ProbeProblem::StillBusy);
            }
            busy.insert(key.clone(), Busy::Running);
        }
        let mut cmd = Command::new(&self.smartctl);
        cmd.args(["--json=c", "-a", "-n", "standby"]);
        if !dev.dev_type.is_empty() {
            cmd.args(["-d", &dev.dev_type]);
        }
        cmd.arg(&dev.name);
        let result = probe::run_bounded(cmd, self.limits());
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let out = match result {
            Ok(o) => o,
            Err(e) => {
                busy.remove(&key);
                return SmartReport::failed(&dev.name, ProbeProblem::Failed(e.to_string()));
            }
        };
        match out.reaped {
            Some(rx) => {
                busy.insert(key, Busy::Stuck(rx));
            }
            None => {
                busy.remove(&key);
            }
        }
        drop(busy);
        if out.timed_out {
            let mut r = SmartReport::failed(
                &dev.name,
                ProbeProblem::Hung { timeout_ms: ms(self.timeout), unreaped: out.unreaped },
            );
            r.dev_type = dev.dev_type.clone();
            r.protocol = dev.protocol.clone();
            return r;
        }
        if out.stdout_overflow {
            return SmartReport::failed(
                &dev.name,
                ProbeProblem::Failed(format!("smartctl wrote more than {MAX_SMARTCTL_OUTPUT} bytes")),
            );
        }
        match parse_report(&out.stdout, &dev.name) {
            Ok(mut r) => {
                // Name the report after the device we asked about: the document's own name can differ
                // (a bridge, a symlink) and the object id must match the slot we probed.
                r.device = dev.name.clone();
                if !dev.dev_type.is_empty() {
                    r.dev_type = dev.dev_type.clone();
                }
                r
            }
            Err(e) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let detail = if stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {}", short(stderr.trim()))
                };
                SmartReport::failed(
                    &dev.name,
                    ProbeProblem::Failed(format!("exit code {:?}: {e}{detail}", out.code)),
                )
            }
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn testdata(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/smart").join(rel)
    }

    fn load(rel: &str) -> SmartReport {
        let bytes = std::fs::read(testdata(rel)).unwrap();
        parse_report(&bytes, rel).unwrap()
    }

    #[test]
    fn failing_wd_drive() {
        let r = load("smart-prom-next/usbjmicron_a_when_failed_now.json");
        assert_eq!(r.exit_status, 216);
        assert_eq!(r.passed, Some(false));
        let a5 = r.attribute(5).unwrap();
        assert_eq!(
            (a5.value, a5.thresh, a5.raw, a5.when_failed.as_str()),
            (Some(133), Some(140), Some(535), "now")
        );
        assert_eq!(r.ata_error_count, Some(84));
        assert!(r.last_self_test_failed);
        assert!(r.problem.is_none());
    }

    #[test]
    fn nvme_scsi_and_open_error() {
        let n = load("smart-prom-next/nvme_xall.json");
        let h = n.nvme.clone().unwrap();
        assert_eq!((h.critical_warning, h.percentage_used, h.available_spare), (Some(0), Some(3), Some(100)));
        let s = load("smart-prom-next/scsi.json");
        assert_eq!(s.scsi_grown_defects, Some(0));
        assert_eq!(s.scsi_uncorrected, Some(0));
        let e = load("smart-prom-next/nvme_xall_error.json");
        assert_eq!(e.exit_status, 2);
        match &e.problem {
            Some(ProbeProblem::OpenFailed { reason, maybe_standby }) => {
                assert!(reason.contains("Permission denied"));
                assert!(!maybe_standby, "an explicit permission error is not standby");
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.has_data());
        assert_eq!(e.device, "/dev/nvme0", "named from argv");
        let sleeping = br#"{"smartctl":{"exit_status":2,"messages":[{"string":"Device is in STANDBY mode, exit(2)","severity":"information"}]}}"#;
        let s = parse_report(sleeping, "/dev/sdc").unwrap();
        assert!(
            matches!(s.problem, Some(ProbeProblem::OpenFailed { maybe_standby: true, .. })),
            "{:?}",
            s.problem
        );
        assert!(s.problem.unwrap().to_string().contains("standby"));
        let c = load("smartctl-exporter/nvme-null-SAMSUNG_MZWLL3T2HAJQ-00005-nvme0.json");
        assert_eq!(c.nvme.unwrap().critical_warning, Some(16));
    }

    #[test]
    fn huge_and_odd_numbers_are_tolerated() {
        let doc = br#"{"smartctl":{"exit_status":0},"device":{"name":"/dev/nvme0","type":"nvme"},
            "nvme_smart_health_information_log":{"critical_warning":0,"data_units_written":340282366920938463463374607431768211455,
            "media_errors":"12","percentage_used":-1},"smart_support":true,"ata_smart_attributes":"weird"}"#;
        let r = parse_report(doc, "x").unwrap();
        let h = r.nvme.clone().unwrap();
        assert!(h.data_units_written.unwrap() > u128::from(u64::MAX));
        assert_eq!(h.media_errors, Some(12));
        assert_eq!(h.percentage_used, None);
        // percentage_used -1 cannot be true: the report is a problem, not a verdict
        assert!(r.problem.as_ref().is_some_and(|p| p.to_string().contains("percentage_used -1")));
        assert!(r.attributes.is_empty());
        assert_eq!(r.object_name().as_str(), "nvme0n1");
    }

    /// A real report with one field replaced (`pointer` is a JSON pointer), re-parsed.
    fn mutated(rel: &str, pointer: &str, v: Value) -> Result<SmartReport, SmartError> {
        let mut doc: Value = serde_json::from_slice(&std::fs::read(testdata(rel)).unwrap()).unwrap();
        *doc.pointer_mut(pointer).unwrap_or_else(|| panic!("{rel} has no {pointer}")) = v;
        parse_report(&serde_json::to_vec(&doc).unwrap(), rel)
    }

    /// Issue 13 item 8: values that cannot be true make the report a problem (grade UNKNOWN), never GOOD.
    #[test]
    fn implausible_values_are_a_problem_not_good() {
        let sat = "smart-prom-next/sat_xall.json";
        let clean = load(sat);
        assert!(clean.problem.is_none() && clean.has_data(), "{:?}", clean.problem);
        let raw_idx = {
            let doc: Value = serde_json::from_slice(&std::fs::read(testdata(sat)).unwrap()).unwrap();
            assert!(doc.pointer("/ata_smart_attributes/table/0/raw/value").is_some());
            0
        };
        let raw = format!("/ata_smart_attributes/table/{raw_idx}/raw/value");
        for (pointer, v, needle) in [
            (raw.as_str(), Value::from("lots"), "raw value \"lots\""),
            (raw.as_str(), Value::from(-1), "raw value -1"),
            ("/temperature/current", Value::from(-99_999_999_999i64), "temperature -99999999999"),
            ("/power_on_time/hours", serde_json::json!(1e308), "power-on hours"),
        ] {
            let r = mutated(sat, pointer, v).unwrap();
            let p = r.problem.as_ref().map(ToString::to_string).unwrap_or_default();
            assert!(p.contains("implausible") && p.contains(needle), "{pointer}: {p}");
            assert!(!r.has_data(), "an implausible report is not scored");
            assert!(r.readings().is_empty());
        }
        let nvme = "smart-prom-next/nvme_xall.json";
        assert!(load(nvme).problem.is_none());
        let r = mutated(nvme, "/nvme_smart_health_information_log/media_errors", Value::from(-3)).unwrap();
        assert!(r.problem.is_some());
        // a hostile document naming many bad fields: the message stays bounded
        let mut doc: Value = serde_json::from_slice(&std::fs::read(testdata(sat)).unwrap()).unwrap();
        for a in doc.pointer_mut("/ata_smart_attributes/table").unwrap().as_array_mut().unwrap() {
            a["raw"]["value"] = Value::from("x");
        }
        let r = parse_report(&serde_json::to_vec(&doc).unwrap(), "x").unwrap();
        let p = r.problem.unwrap().to_string();
        assert!(p.contains(" more"), "{p}");
        assert!(implausible_values(&doc).len() <= MAX_IMPLAUSIBLE_SHOWN + 1);
    }

    /// A SCSI report stripped of its `smartctl` section is still graded from its logs; JSON with no
    /// device data at all is refused.
    #[test]
    fn document_without_smartctl_section() {
        let mut doc: Value =
            serde_json::from_slice(&std::fs::read(testdata("smart-prom-next/scsi.json")).unwrap()).unwrap();
        doc.as_object_mut().unwrap().remove("smartctl");
        let r = parse_report(&serde_json::to_vec(&doc).unwrap(), "/dev/sdz").unwrap();
        assert!(r.has_data());
        assert!(r.scsi_grown_defects.is_some() || r.scsi_uncorrected.is_some(), "{r:?}");
        assert_eq!(parse_report(br#"{"hello":1}"#, "x"), Err(SmartError::NotSmartctl));
    }

    #[test]
    fn truncated_and_garbage_are_errors() {
        let full = std::fs::read(testdata("smart-prom-next/sat_xall.json")).unwrap();
        for cut in [1, 10, full.len() / 2, full.len() - 2] {
            assert!(matches!(parse_report(&full[..cut], "x"), Err(SmartError::BadJson(_))), "cut {cut}");
        }
        let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        assert!(parse_report(&garbage, "x").is_err());
        assert_eq!(parse_report(b"{}", "x"), Err(SmartError::NotSmartctl));
        assert!(parse_report(b"[1,2]", "x").is_err());
        // A device list is not a device report: a clear error, never a GOOD grade for a file name.
        for f in ["smart-prom-next/nvme_scan_open_error.json", "smart-prom-next/scsi_scan.json"] {
            let scan = std::fs::read(testdata(f)).unwrap();
            assert_eq!(parse_report(&scan, "x"), Err(SmartError::ScanOutput), "{f}");
        }
    }

    #[test]
    fn scans() {
        let s = parse_scan(&std::fs::read(testdata("scan/smartctl_scan_megaraid.json")).unwrap()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(object_name(&s[1].name, &s[1].dev_type), "bus-0@megaraid-1");
        let s = parse_scan(&std::fs::read(testdata("smart-prom-next/nvme_scan_open_error.json")).unwrap())
            .unwrap();
        assert_eq!(s[0].open_error.as_deref(), Some("Permission denied"));
        for f in [
            "scan/smartctl_scan_simple.json",
            "scan/smartctl_scan_nvme.json",
            "smart-prom-next/scsi_scan.json",
        ] {
            assert!(!parse_scan(&std::fs::read(testdata(f)).unwrap()).unwrap().is_empty(), "{f}");
        }
        assert!(parse_scan(b"{\"devices\": [").is_err());
    }

    #[test]
    fn every_recorded_file_parses() {
        let mut n = 0;
        for dir in ["smartctl-exporter", "smart-prom-next"] {
            for e in std::fs::read_dir(testdata(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "json") && !p.to_string_lossy().contains("scan") {
                    let r = parse_report(&std::fs::read(&p).unwrap(), "x");
                    assert!(r.is_ok(), "{}: {r:?}", p.display());
                    n += 1;
                }
            }
        }
        assert!(n >= 170, "{n}");
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("smartctl");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn dev(name: &str) -> ScanDevice {
        ScanDevice { name: name.into(), dev_type: "sat".into(), protocol: "ATA".into(), open_error: None }
    }

    #[test]
    fn hanging_smartctl_is_killed_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let p = SmartProbe::new(script(d.path(), "sleep 600"), Duration::from_millis(300));
        let r = p.probe(&dev("/dev/sdz"));
        assert!(matches!(r.problem, Some(ProbeProblem::Hung { timeout_ms: 300, .. })), "{:?}", r.problem);
        assert!(r.has_data());
        assert_eq!(r.readings(), vec![(Reading::ProbeHung, 1.0)]);
        // The sleep was killed and reaped, so the device is free again.
        assert!(p.busy.lock().unwrap().is_empty());
    }

    #[test]
    fn never_two_probes_on_one_device() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("started");
        let p = SmartProbe::new(
            script(d.path(), &format!("touch {}; sleep 600", marker.display())),
            Duration::from_millis(1500),
        );
        let p2 = p.clone();
        let first = std::thread::spawn(move || p2.probe(&dev("/dev/sdq")));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(marker.exists(), "first probe did not start");
        let second = p.probe(&dev("/dev/sdq"));
        assert_eq!(second.problem, Some(ProbeProblem::StillBusy));
        assert_eq!(second.readings(), vec![(Reading::ProbeHung, 1.0)], "a stuck device is evidence");
        assert!(matches!(first.join().unwrap().problem, Some(ProbeProblem::Hung { .. })));
        // Once the first probe is over, the device can be probed again (and hangs again here).
        assert!(matches!(p.probe(&dev("/dev/sdq")).problem, Some(ProbeProblem::Hung { .. })));
    }

    /// Found by `props::smart_report_takes_any_json` (input `[[], [""]]`, which serde read as the
    /// document's fields in order: a device named ""): a device section or argv naming nothing gave an
    /// empty object name.
    #[test]
    fn a_device_name_that_names_nothing_is_not_used() {
        let doc = |dev: &str| {
            format!(
                r#"{{"smartctl":{{"exit_status":0,"argv":["smartctl","-a","{dev}"]}},
                   "device":{{"name":"{dev}","type":"sat"}},"smart_status":{{"passed":true}}}}"#
            )
        };
        for bad in ["", "/dev/"] {
            let r = parse_report(doc(bad).as_bytes(), "/dev/sdc").unwrap();
            assert_eq!((r.device.as_str(), r.object_name().as_str()), ("/dev/sdc", "sdc"), "{bad:?}");
        }
        // A bad device section leaves the argv's device.
        let r = parse_report(
            br#"{"smartctl":{"argv":["smartctl","-a","/dev/sdd"]},"device":{"name":""},"smart_status":{}}"#,
            "/dev/sdc",
        )
        .unwrap();
        assert_eq!(r.object_name(), "sdd");
        // The property test's input: an array is not a smartctl document.
        assert_eq!(parse_report(br#"[[], [""]]"#, "/dev/sde"), Err(SmartError::NotSmartctl));
        let scan =
            br#"{"smartctl":{},"devices":[{"name":""},{"name":"/dev/"},{"name":"/dev/sda","type":"sat"}]}"#;
        let s = parse_scan(scan).unwrap();
        assert_eq!(s.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["/dev/sda"]);
        assert_eq!(parse_scan(br#"[{}, [{"name": "/dev/sda"}]]"#), Err(SmartError::NotSmartctl));
    }

    #[test]
    fn command_failed_bit_is_a_probe_note_not_a_verdict() {
        let r = load("smart-prom-next/usbjmicron_x_exit_status_4.json");
        assert_eq!(r.exit_status, 4);
        assert!(r.has_data() && r.probe_note().is_some());
        assert!(load("smart-prom-next/sat_xall.json").probe_note().is_none());
    }

    #[test]
    fn fake_smartctl_output_is_parsed_and_args_passed() {
        let d = tempfile::tempdir().unwrap();
        let src = testdata("smart-prom-next/usbjmicron_a_when_failed_now.json");
        let args = d.path().join("args");
        let p = SmartProbe::new(
            script(d.path(), &format!("echo \"$@\" > {}; cat {}; exit 216", args.display(), src.display())),
            Duration::from_secs(20),
        );
        let r = p.probe(&dev("/dev/sdb"));
        assert_eq!(r.passed, Some(false));
        assert_eq!(std::fs::read_to_string(&args).unwrap().trim(), "--json=c -a -n standby -d sat /dev/sdb");
        let g = SmartProbe::new(script(d.path(), "echo '{\"smartctl\": {'; exit 0"), Duration::from_secs(20));
        assert!(matches!(g.probe(&dev("/dev/sdb")).problem, Some(ProbeProblem::Failed(_))));
        let missing = SmartProbe::new("/nonexistent/smartctl".into(), Duration::from_secs(1));
        assert!(matches!(missing.probe(&dev("/dev/sdb")).problem, Some(ProbeProblem::Failed(_))));
    }
}
