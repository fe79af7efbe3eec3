//! The worker's `[worker]` configuration: where slots are identified (sysfs/dev roots), what disk actions
//! may do (off by default), the benchmark thresholds per profile and per model, and the machine fixes
//! (service restart template and allow-list, clean-up rules, reboot command, environment checks).
//! Everything is validated before the agent starts; an invalid section is a clear error.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Longest timeout any worker action or command may be given: a repair step that needs more than an hour
/// is hung, and the master's action timeout would have expired long before.
pub const MAX_ACTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest benchmark the config may ask for: TEST must stay "a few seconds", not a burn-in.
pub const MAX_BENCH_SECONDS: f64 = 120.0;
/// Largest benchmark file: big enough to get past a drive's cache, small enough to fit any new disk.
pub const MAX_BENCH_FILE_MIB: u64 = 16 * 1024;
/// Most clean-up rules, globs per rule, services and environment checks: a config is written by hand.
pub const MAX_LIST_ITEMS: usize = 256;
/// Longest ext4 label (xfs allows 12; the config must pick a short enough prefix for its slot names).
pub const MAX_LABEL_LEN: usize = 16;

/// The `[worker]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Report what every action would do and change nothing (a request can also ask for a dry run).
    #[serde(default)]
    pub dry_run: bool,
    /// Slot identity: the serial is read from `{sys_root}/block/{slot}/device/serial` (or wwid/vpd).
    #[serde(default = "default_sys_root")]
    pub sys_root: PathBuf,
    /// Slot device node: `{dev_root}/{slot}` (a symlink to the real node is fine).
    #[serde(default = "default_dev_root")]
    pub dev_root: PathBuf,
    /// The kernel's block topology by `major:minor` (partitions, holders): the live sysfs even when
    /// `sys_root` points at a test tree.
    #[serde(default = "default_block_sys")]
    pub block_sys: PathBuf,
    /// `/proc` for mountinfo and swaps (the agent's mount namespace).
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    /// Most bytes of command output kept in one report.
    #[serde(default = "default_output_max")]
    pub output_max_bytes: usize,
    #[serde(default)]
    pub disk: DiskConfig,
    #[serde(default)]
    pub machine: MachineConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            dry_run: false,
            sys_root: default_sys_root(),
            dev_root: default_dev_root(),
            block_sys: default_block_sys(),
            proc_root: default_proc_root(),
            output_max_bytes: default_output_max(),
            disk: DiskConfig::default(),
            machine: MachineConfig::default(),
        }
    }
}

/// `[worker.disk]`: NEWBIE (provision) and TEST on a replaced disk.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Partition, format, mount and benchmark disks at all. Off by default: an operator turns it on
    /// for hosts whose disks Huatuo may re-provision.
    #[serde(default)]
    pub allow_destructive: bool,
    /// Filesystem made on the new partition.
    #[serde(default = "default_fs_type")]
    pub fs_type: String,
    /// mkfs command template (`{device}`, `{label}`); default from `fs_type`.
    #[serde(default)]
    pub mkfs: Option<Vec<String>>,
    /// Our filesystem label is `{label_prefix}{slot}`: a disk that carries it is already provisioned.
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
    /// NEWBIE pre-mounts at `{staging_root}/{slot}`.
    #[serde(default = "default_staging_root")]
    pub staging_root: PathBuf,
    /// A passed TEST mounts at `{mount_root}/{slot}`.
    #[serde(default = "default_mount_root")]
    pub mount_root: PathBuf,
    /// `mount -o` options for both mounts.
    #[serde(default = "default_mount_options")]
    pub mount_options: String,
    /// Programs (resolved through PATH when not absolute).
    #[serde(default)]
    pub tools: DiskTools,
    #[serde(default = "default_provision_timeout")]
    pub provision_timeout_s: u64,
    #[serde(default = "default_test_timeout")]
    pub test_timeout_s: u64,
    /// Run a SMART short self-test during TEST where the device supports it.
    #[serde(default = "default_true")]
    pub self_test: bool,
    /// Longest wait for the short self-test (drives say ~2 minutes).
    #[serde(default = "default_self_test_timeout")]
    pub self_test_timeout_s: u64,
    /// How often a running self-test is polled (drives report progress in 10% steps of ~2 minutes).
    #[serde(default = "default_self_test_poll")]
    pub self_test_poll_ms: u64,
    /// Total benchmark time over its four phases.
    #[serde(default = "default_bench_seconds")]
    pub bench_seconds: f64,
    /// Size of the benchmark file written in the staging mount.
    #[serde(default = "default_bench_file_mib")]
    pub bench_file_mib: u64,
    /// Thresholds used when no model entry matches and the request names no profile.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Thresholds by profile (`online`, `offline`, `archive`, ...).
    #[serde(default = "default_profiles")]
    pub profiles: BTreeMap<String, Thresholds>,
    /// Thresholds by model prefix (longest match wins over the profile).
    #[serde(default)]
    pub models: BTreeMap<String, Thresholds>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            allow_destructive: false,
            fs_type: default_fs_type(),
            mkfs: None,
            label_prefix: default_label_prefix(),
            staging_root: default_staging_root(),
            mount_root: default_mount_root(),
            mount_options: default_mount_options(),
            tools: DiskTools::default(),
            provision_timeout_s: default_provision_timeout(),
            test_timeout_s: default_test_timeout(),
            self_test: true,
            self_test_timeout_s: default_self_test_timeout(),
            self_test_poll_ms: default_self_test_poll(),
            bench_seconds: default_bench_seconds(),
            bench_file_mib: default_bench_file_mib(),
            profile: default_profile(),
            profiles: default_profiles(),
            models: BTreeMap::new(),
        }
    }
}

/// `[worker.disk.tools]`: the external programs disk actions run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskTools {
    #[serde(default = "tool_sfdisk")]
    pub sfdisk: String,
    #[serde(default = "tool_partx")]
    pub partx: String,
    #[serde(default = "tool_blkid")]
    pub blkid: String,
    #[serde(default = "tool_mount")]
    pub mount: String,
    #[serde(default = "tool_umount")]
    pub umount: String,
    #[serde(default = "tool_smartctl")]
    pub smartctl: String,
}

impl Default for DiskTools {
    fn default() -> Self {
        DiskTools {
            sfdisk: tool_sfdisk(),
            partx: tool_partx(),
            blkid: tool_blkid(),
            mount: tool_mount(),
            umount: tool_umount(),
            smartctl: tool_smartctl(),
        }
    }
}

/// Benchmark floors and ceilings; a missing one is not checked.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub min_seq_read_mbps: Option<f64>,
    pub min_seq_write_mbps: Option<f64>,
    pub min_rand_read_iops: Option<f64>,
    pub min_rand_write_iops: Option<f64>,
    pub max_rand_read_p99_ms: Option<f64>,
    pub max_rand_write_p99_ms: Option<f64>,
}

impl Thresholds {
    /// `(name, value)` of every set threshold, in a fixed order.
    pub fn items(&self) -> Vec<(&'static str, f64)> {
        [
            ("min_seq_read_mbps", self.min_seq_read_mbps),
            ("min_seq_write_mbps", self.min_seq_write_mbps),
            ("min_rand_read_iops", self.min_rand_read_iops),
            ("min_rand_write_iops", self.min_rand_write_iops),
            ("max_rand_read_p99_ms", self.max_rand_read_p99_ms),
            ("max_rand_write_p99_ms", self.max_rand_write_p99_ms),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// `[worker.machine]`: FIX by cause and the NEWBIE/TEST environment checks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Restart command template; `{service}` is replaced by an allow-listed service name.
    #[serde(default = "default_restart_command")]
    pub restart_command: Vec<String>,
    /// Services FIX may restart. Empty: restart-service is refused.
    #[serde(default)]
    pub services: Vec<String>,
    /// Service restarted when the request names none.
    #[serde(default)]
    pub default_service: Option<String>,
    #[serde(default = "default_restart_timeout")]
    pub restart_timeout_s: u64,
    /// Clean-up rules for a full filesystem. Empty: clean-fs is refused.
    #[serde(default)]
    pub clean: Vec<CleanRule>,
    #[serde(default = "default_clean_timeout")]
    pub clean_timeout_s: u64,
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
    /// The last rung stays a dry run until an operator turns this off (a dry-run reboot reports failure:
    /// the machine was not fixed).
    #[serde(default = "default_true")]
    pub reboot_dry_run: bool,
    #[serde(default = "default_restart_timeout")]
    pub reboot_timeout_s: u64,
    /// Environment checks for machine NEWBIE (provision) and TEST; all of a stage's checks must pass.
    #[serde(default)]
    pub checks: Vec<EnvCheck>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            restart_command: default_restart_command(),
            services: Vec::new(),
            default_service: None,
            restart_timeout_s: default_restart_timeout(),
            clean: Vec::new(),
            clean_timeout_s: default_clean_timeout(),
            reboot_command: default_reboot_command(),
            reboot_dry_run: true,
            reboot_timeout_s: default_restart_timeout(),
            checks: Vec::new(),
        }
    }
}

/// One clean-up rule: regular files under `root` whose name matches a glob and whose mtime is older
/// than `min_age_s`. Symlinks are never followed or removed; nothing outside `root` is touched.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CleanRule {
    pub root: PathBuf,
    /// Shell-style globs on the file name (`*`, `?`).
    pub globs: Vec<String>,
    pub min_age_s: u64,
    /// How deep below `root` to look (0 = only `root` itself).
    #[serde(default = "default_clean_depth")]
    pub max_depth: usize,
}

/// One environment check: a command that must exit 0 within its timeout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvCheck {
    pub name: String,
    pub command: Vec<String>,
    #[serde(default = "default_check_timeout")]
    pub timeout_s: u64,
    /// `provision` and/or `test`; default both.
    #[serde(default = "default_stages")]
    pub stages: Vec<String>,
}

fn default_sys_root() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_dev_root() -> PathBuf {
    PathBuf::from("/dev")
}
fn default_block_sys() -> PathBuf {
    PathBuf::from("/sys/dev/block")
}
fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}
fn default_output_max() -> usize {
    64 * 1024
}
fn default_fs_type() -> String {
    "ext4".into()
}
fn default_label_prefix() -> String {
    "huatuo-".into()
}
fn default_staging_root() -> PathBuf {
    PathBuf::from("/var/lib/huatuo/agent/staging")
}
fn default_mount_root() -> PathBuf {
    PathBuf::from("/data")
}
fn default_mount_options() -> String {
    "noatime".into()
}
fn tool_sfdisk() -> String {
    "sfdisk".into()
}
fn tool_partx() -> String {
    "partx".into()
}
fn tool_blkid() -> String {
    "blkid".into()
}
fn tool_mount() -> String {
    "mount".into()
}
fn tool_umount() -> String {
    "umount".into()
}
fn tool_smartctl() -> String {
    "smartctl".into()
}
fn default_provision_timeout() -> u64 {
    300
}
fn default_test_timeout() -> u64 {
    600
}
fn default_self_test_timeout() -> u64 {
    300
}
fn default_self_test_poll() -> u64 {
    5000
}
fn default_bench_seconds() -> f64 {
    4.0
}
fn default_bench_file_mib() -> u64 {
    256
}
fn default_profile() -> String {
    "online".into()
}
/// Floors any healthy hard disk clears by a wide margin; operators tighten them per model.
fn default_profiles() -> BTreeMap<String, Thresholds> {
    let base = Thresholds {
        min_seq_read_mbps: Some(50.0),
        min_seq_write_mbps: Some(30.0),
        min_rand_read_iops: Some(50.0),
        min_rand_write_iops: Some(30.0),
        max_rand_read_p99_ms: Some(500.0),
        max_rand_write_p99_ms: Some(1000.0),
    };
    ["online", "offline", "archive"].into_iter().map(|p| (p.to_string(), base.clone())).collect()
}
fn default_restart_command() -> Vec<String> {
    vec!["systemctl".into(), "restart".into(), "{service}".into()]
}
fn default_restart_timeout() -> u64 {
    120
}
fn default_clean_timeout() -> u64 {
    300
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_clean_depth() -> usize {
    8
}
fn default_check_timeout() -> u64 {
    30
}
fn default_stages() -> Vec<String> {
    vec!["provision".into(), "test".into()]
}
fn default_true() -> bool {
    true
}

/// A service name safe to put in a command line (systemd unit names): no spaces, no shell or path
/// characters, no leading dash (it would read as an option).
pub fn valid_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b'-' | b':'))
}

/// A worker config that cannot be used; the text names the key and the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerConfigError {
    #[error("{0}")]
    Invalid(String),
}

fn check_timeout(what: &str, s: u64) -> Result<(), WorkerConfigError> {
    if s == 0 || Duration::from_secs(s) > MAX_ACTION_TIMEOUT {
        return Err(WorkerConfigError::Invalid(format!(
            "{what} must be within 1..={}",
            MAX_ACTION_TIMEOUT.as_secs()
        )));
    }
    Ok(())
}

fn check_command(what: &str, cmd: &[String]) -> Result<(), WorkerConfigError> {
    if cmd.is_empty() || cmd[0].trim().is_empty() {
        return Err(WorkerConfigError::Invalid(format!("{what}: the command is empty")));
    }
    if cmd.len() > MAX_LIST_ITEMS {
        return Err(WorkerConfigError::Invalid(format!("{what}: more than {MAX_LIST_ITEMS} arguments")));
    }
    Ok(())
}

fn check_abs(what: &str, p: &Path) -> Result<(), WorkerConfigError> {
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(WorkerConfigError::Invalid(format!(
            "{what} {p:?} must be an absolute path without '..'"
        )));
    }
    Ok(())
}

impl WorkerConfig {
    /// Everything that can be checked without touching a device.
    pub fn validate(&self) -> Result<(), WorkerConfigError> {
        for (what, p) in [
            ("worker.sys_root", &self.sys_root),
            ("worker.dev_root", &self.dev_root),
            ("worker.block_sys", &self.block_sys),
            ("worker.proc_root", &self.proc_root),
            ("worker.disk.staging_root", &self.disk.staging_root),
            ("worker.disk.mount_root", &self.disk.mount_root),
        ] {
            check_abs(what, p)?;
        }
        if self.output_max_bytes < 1024 || self.output_max_bytes > 16 * 1024 * 1024 {
            return Err(WorkerConfigError::Invalid(
                "worker.output_max_bytes must be within 1024..=16777216".into(),
            ));
        }
        let d = &self.disk;
        if d.staging_root == d.mount_root {
            return Err(WorkerConfigError::Invalid(
                "worker.disk.staging_root and mount_root must differ".into(),
            ));
        }
        if d.fs_type.is_empty() || !d.fs_type.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.fs_type {:?} is not a filesystem type",
                d.fs_type
            )));
        }
        if d.mkfs.is_none() && !["ext4", "ext3", "ext2", "xfs"].contains(&d.fs_type.as_str()) {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.fs_type {:?} has no built-in mkfs command: set worker.disk.mkfs",
                d.fs_type
            )));
        }
        if let Some(m) = &d.mkfs {
            check_command("worker.disk.mkfs", m)?;
            if !m.iter().any(|a| a.contains("{device}")) {
                return Err(WorkerConfigError::Invalid("worker.disk.mkfs must contain {device}".into()));
            }
        }
        if d.label_prefix.len() >= MAX_LABEL_LEN
            || !d.label_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.label_prefix {:?}: at most {} characters of A-Z a-z 0-9 - _",
                d.label_prefix,
                MAX_LABEL_LEN - 1
            )));
        }
        if d.mount_options.contains(char::is_whitespace) {
            return Err(WorkerConfigError::Invalid(
                "worker.disk.mount_options must not contain spaces".into(),
            ));
        }
        check_timeout("worker.disk.provision_timeout_s", d.provision_timeout_s)?;
        check_timeout("worker.disk.test_timeout_s", d.test_timeout_s)?;
        check_timeout("worker.disk.self_test_timeout_s", d.self_test_timeout_s)?;
        if !(100..=60_000).contains(&d.self_test_poll_ms) {
            return Err(WorkerConfigError::Invalid(
                "worker.disk.self_test_poll_ms must be within 100..=60000".into(),
            ));
        }
        if !(d.bench_seconds > 0.0 && d.bench_seconds <= MAX_BENCH_SECONDS) {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.bench_seconds must be within (0, {MAX_BENCH_SECONDS}]"
            )));
        }
        if d.bench_file_mib < 4 || d.bench_file_mib > MAX_BENCH_FILE_MIB {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.bench_file_mib must be within 4..={MAX_BENCH_FILE_MIB}"
            )));
        }
        if !d.profiles.contains_key(&d.profile) {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.disk.profile {:?} has no entry in worker.disk.profiles (have: {})",
                d.profile,
                d.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if d.profiles.len() + d.models.len() > MAX_LIST_ITEMS {
            return Err(WorkerConfigError::Invalid("worker.disk: too many threshold entries".into()));
        }
        for (name, t) in d
            .profiles
            .iter()
            .map(|(k, v)| (format!("profiles.{k}"), v))
            .chain(d.models.iter().map(|(k, v)| (format!("models.{k:?}"), v)))
        {
            for (k, v) in t.items() {
                if !(v.is_finite() && v > 0.0) {
                    return Err(WorkerConfigError::Invalid(format!(
                        "worker.disk.{name}.{k} must be a positive number"
                    )));
                }
            }
        }
        let m = &self.machine;
        check_command("worker.machine.restart_command", &m.restart_command)?;
        check_command("worker.machine.reboot_command", &m.reboot_command)?;
        check_timeout("worker.machine.restart_timeout_s", m.restart_timeout_s)?;
        check_timeout("worker.machine.reboot_timeout_s", m.reboot_timeout_s)?;
        check_timeout("worker.machine.clean_timeout_s", m.clean_timeout_s)?;
        if m.services.len() > MAX_LIST_ITEMS
            || m.clean.len() > MAX_LIST_ITEMS
            || m.checks.len() > MAX_LIST_ITEMS
        {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.machine: at most {MAX_LIST_ITEMS} services, rules and checks"
            )));
        }
        for s in m.services.iter().chain(m.default_service.iter()) {
            if !valid_service_name(s) {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine: {s:?} is not a valid service name"
                )));
            }
        }
        if let Some(s) = &m.default_service
            && !m.services.contains(s)
        {
            return Err(WorkerConfigError::Invalid(format!(
                "worker.machine.default_service {s:?} is not in worker.machine.services"
            )));
        }
        for (i, r) in m.clean.iter().enumerate() {
            check_abs(&format!("worker.machine.clean[{i}].root"), &r.root)?;
            if r.root == Path::new("/") {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.clean[{i}].root must not be /"
                )));
            }
            if r.globs.is_empty() || r.globs.len() > MAX_LIST_ITEMS {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.clean[{i}].globs: 1..={MAX_LIST_ITEMS} globs"
                )));
            }
            if r.globs.iter().any(|g| g.is_empty() || g.contains('/')) {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.clean[{i}].globs match file names: no '/' or empty"
                )));
            }
            if r.globs.iter().any(|g| g.contains(['[', ']', '{', '}', '\\'])) {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.clean[{i}].globs: only * and ? are supported"
                )));
            }
            if r.max_depth > 64 {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.clean[{i}].max_depth must be <= 64"
                )));
            }
        }
        for c in &m.checks {
            check_command(&format!("worker.machine.checks.{}", c.name), &c.command)?;
            check_timeout(&format!("worker.machine.checks.{}.timeout_s", c.name), c.timeout_s)?;
            if c.stages.is_empty() || c.stages.iter().any(|s| s != "provision" && s != "test") {
                return Err(WorkerConfigError::Invalid(format!(
                    "worker.machine.checks.{}.stages: provision and/or test",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WorkerConfig, String> {
        let c: WorkerConfig = toml::from_str(s).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_are_safe_and_valid() {
        let c = parse("").unwrap();
        assert!(!c.disk.allow_destructive, "disk actions are off by default");
        assert!(c.machine.reboot_dry_run, "reboot is a dry run by default");
        assert!(c.machine.services.is_empty() && c.machine.clean.is_empty());
        assert_eq!(c, WorkerConfig::default());
    }

    #[test]
    fn bad_sections_are_clear_errors() {
        let cases = [
            ("bogus = 1", "unknown field"),
            ("sys_root = \"sys\"", "absolute"),
            ("[disk]\nstaging_root = \"/a\"\nmount_root = \"/a\"", "must differ"),
            ("[disk]\nfs_type = \"btrfs\"", "no built-in mkfs"),
            ("[disk]\nfs_type = \"ext4;rm\"", "not a filesystem type"),
            ("[disk]\nmkfs = [\"mkfs.ext4\"]", "{device}"),
            ("[disk]\nlabel_prefix = \"a-very-long-prefix\"", "label_prefix"),
            ("[disk]\nbench_seconds = 0", "bench_seconds"),
            ("[disk]\nbench_file_mib = 1", "bench_file_mib"),
            ("[disk]\nprovision_timeout_s = 0", "provision_timeout_s"),
            ("[disk.profiles.online]\nmin_seq_read_mbps = -1", "positive"),
            ("[disk]\nprofile = \"fast\"", "no entry in worker.disk.profiles"),
            ("[machine]\nservices = [\"a b\"]", "valid service"),
            ("[machine]\nservices = [\"-x\"]", "valid service"),
            ("[machine]\nservices = [\"a\"]\ndefault_service = \"b\"", "not in"),
            ("[machine]\nrestart_command = []", "empty"),
            ("[[machine.clean]]\nroot = \"/\"\nglobs = [\"*\"]\nmin_age_s = 1", "must not be /"),
            ("[[machine.clean]]\nroot = \"/var/../etc\"\nglobs = [\"*\"]\nmin_age_s = 1", "absolute"),
            ("[[machine.clean]]\nroot = \"/var/log\"\nglobs = [\"a/b\"]\nmin_age_s = 1", "file names"),
            ("[[machine.clean]]\nroot = \"/var/log\"\nglobs = [\"*.[0-9]\"]\nmin_age_s = 1", "only * and ?"),
            ("[[machine.checks]]\nname = \"x\"\ncommand = [\"true\"]\nstages = [\"later\"]", "stages"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn every_knob_parses() {
        let full = r#"
            dry_run = true
            sys_root = "/sys"
            dev_root = "/dev/disk/by-slot"
            block_sys = "/sys/dev/block"
            proc_root = "/proc"
            output_max_bytes = 4096
            [disk]
            allow_destructive = true
            fs_type = "xfs"
            mkfs = ["mkfs.xfs", "-f", "-L", "{label}", "{device}"]
            label_prefix = "ht-"
            staging_root = "/srv/staging"
            mount_root = "/srv/data"
            mount_options = "noatime,nodiratime"
            provision_timeout_s = 100
            test_timeout_s = 200
            self_test = false
            self_test_timeout_s = 120
            self_test_poll_ms = 1000
            bench_seconds = 2.5
            bench_file_mib = 64
            profile = "archive"
            [disk.tools]
            sfdisk = "/sbin/sfdisk"
            partx = "/usr/bin/partx"
            blkid = "/sbin/blkid"
            mount = "/bin/mount"
            umount = "/bin/umount"
            smartctl = "/usr/sbin/smartctl"
            [disk.profiles.archive]
            min_seq_read_mbps = 80.0
            [disk.models."ST4000NM"]
            max_rand_read_p99_ms = 80.0
            [machine]
            restart_command = ["systemctl", "restart", "{service}"]
            services = ["a.service", "b@1"]
            default_service = "a.service"
            restart_timeout_s = 30
            clean_timeout_s = 30
            reboot_command = ["/sbin/reboot"]
            reboot_dry_run = false
            reboot_timeout_s = 30
            [[machine.clean]]
            root = "/var/log"
            globs = ["*.gz"]
            min_age_s = 604800
            max_depth = 2
            [[machine.checks]]
            name = "clock"
            command = ["chronyc", "waitsync", "1"]
            timeout_s = 10
            stages = ["test"]
        "#;
        let c = parse(full).unwrap();
        assert_eq!(c.disk.models["ST4000NM"].max_rand_read_p99_ms, Some(80.0));
        assert_eq!(c.disk.profiles.len(), 1, "a configured profiles table replaces the defaults");
        assert_eq!(c.machine.checks[0].stages, ["test"]);
    }

    #[test]
    fn service_names() {
        assert!(valid_service_name("nginx.service"));
        assert!(valid_service_name("getty@tty1"));
        for bad in ["", "a b", "a;b", "../x", "-f", "a/b", "$(x)"] {
            assert!(!valid_service_name(bad), "{bad:?}");
        }
    }
}
