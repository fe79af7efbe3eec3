//! The worker's machine actions with fake commands (scripts in a temp dir): restart of an allow-listed
//! service, a hung restart killed with its whole process group at the deadline, clean-fs removing only
//! old matching regular files under the configured root (symlinks and other directories untouched), the
//! reboot rung that stays a dry run by default, environment checks, and one action per object at a time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use agent::worker::config::{CleanRule, EnvCheck};
use agent::worker::{ActionReport, ActionRequest, Outcome, Worker, WorkerConfig};
use state_machines::{Action, FixAction, Kind, ObjectId};

const HOST: &str = "h1";
/// The request's "now": file ages are judged against this, not the wall clock.
const NOW_MS: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 86_400_000;

fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

fn req(action: Action) -> ActionRequest {
    ActionRequest {
        object: ObjectId::machine(HOST).unwrap(),
        action,
        old_serial: None,
        new_serial: None,
        params: BTreeMap::new(),
        dry_run: false,
        now_ms: NOW_MS,
    }
}

fn with(mut r: ActionRequest, k: &str, v: &str) -> ActionRequest {
    r.params.insert(k.into(), v.into());
    r
}

fn run(w: &Worker, r: &ActionRequest) -> ActionReport {
    let rep = w.run_blocking(r);
    println!("{} {}: {:?} {}", r.object, r.action, rep.outcome, rep.detail);
    rep
}

const RESTART: Action = Action::Fix { fix: FixAction::RestartService };
const CLEAN: Action = Action::Fix { fix: FixAction::CleanFs };
const REBOOT: Action = Action::Fix { fix: FixAction::Reboot };

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

#[test]
fn restart_service_runs_only_allow_listed_names() {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("restarts.log");
    let fake = script(d.path(), "fake-systemctl", &format!("echo \"$@\" >> {}", log.display()));
    let mut cfg = WorkerConfig::default();
    cfg.machine.restart_command = vec![fake, "restart".into(), "{service}".into()];
    cfg.machine.services = vec!["nginx.service".into(), "pegasus-replica".into()];
    let w = Worker::new(HOST, cfg.clone()).unwrap();

    let rep = run(&w, &with(req(RESTART), "service", "pegasus-replica"));
    assert_eq!(rep.outcome, Outcome::Done, "{rep:#?}");
    assert!(rep.success && rep.detail.contains("restarted pegasus-replica"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "restart pegasus-replica\n");
    assert_eq!(rep.to_input().name(), "result");

    for (name, why) in [("sshd", "not in worker.machine.services"), ("a;reboot", "not a valid service name")]
    {
        let rep = run(&w, &with(req(RESTART), "service", name));
        assert_eq!(rep.outcome, Outcome::Refused);
        assert!(rep.detail.contains(why), "{}", rep.detail);
    }
    let rep = run(&w, &req(RESTART));
    assert_eq!(rep.outcome, Outcome::Refused, "no service named and no default");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "restart pegasus-replica\n", "nothing else ran");

    // A default service; a dry run records the command without running it.
    cfg.machine.default_service = Some("nginx.service".into());
    let w = Worker::new(HOST, cfg).unwrap();
    let mut r = req(RESTART);
    r.dry_run = true;
    let rep = run(&w, &r);
    assert_eq!(rep.outcome, Outcome::DryRun);
    assert!(rep.steps[0].planned && rep.steps[0].what.ends_with("restart nginx.service"), "{:?}", rep.steps);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "restart pegasus-replica\n");

    // A failing restart is a failure with the program's words.
    let mut cfg = WorkerConfig::default();
    cfg.machine.restart_command =
        vec![script(d.path(), "bad", "echo unit not found >&2; exit 5"), "{service}".into()];
    cfg.machine.services = vec!["x".into()];
    let rep = run(&Worker::new(HOST, cfg).unwrap(), &with(req(RESTART), "service", "x"));
    assert_eq!(rep.outcome, Outcome::Failed);
    assert!(rep.detail.contains("exit Some(5)") && rep.detail.contains("unit not found"), "{}", rep.detail);
}

#[test]
fn hung_restart_is_killed_with_its_group_at_the_deadline() {
    let d = tempfile::tempdir().unwrap();
    let pidfile = d.path().join("child.pid");
    let hang = script(d.path(), "hang", &format!("sleep 300 &\necho $! > {}\nwait", pidfile.display()));
    let mut cfg = WorkerConfig::default();
    cfg.machine.restart_command = vec![hang, "{service}".into()];
    cfg.machine.services = vec!["svc".into()];
    cfg.machine.restart_timeout_s = 1;
    let w = Worker::new(HOST, cfg).unwrap();
    let start = Instant::now();
    let rep = run(&w, &with(req(RESTART), "service", "svc"));
    let took = start.elapsed();
    assert_eq!(rep.outcome, Outcome::TimedOut, "{rep:#?}");
    assert!(!rep.success);
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(6), "{took:?}");
    assert!(rep.steps[0].timed_out && rep.output.contains("process group killed"), "{rep:#?}");
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    wait_for("the grandchild to die", Duration::from_secs(3), || !alive(&pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_and_one_action_per_object() {
    let d = tempfile::tempdir().unwrap();
    let started = d.path().join("started");
    let release = d.path().join("release");
    let slow = script(
        d.path(),
        "slow",
        &format!("touch {}\nwhile [ ! -e {} ]; do sleep 0.01; done", started.display(), release.display()),
    );
    let mut cfg = WorkerConfig::default();
    cfg.machine.restart_command = vec![slow, "{service}".into()];
    cfg.machine.services = vec!["svc".into()];
    cfg.machine.restart_timeout_s = 20;
    let w = Worker::new(HOST, cfg).unwrap();
    let first = tokio::spawn({
        let w = w.clone();
        async move { w.run(with(req(RESTART), "service", "svc")).await }
    });
    wait_for("the first action to start", Duration::from_secs(10), || started.exists());
    let second = w.run(with(req(RESTART), "service", "svc")).await;
    assert_eq!(second.outcome, Outcome::Refused);
    assert!(second.detail.contains("still running"), "{}", second.detail);
    std::fs::write(&release, "").unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.outcome, Outcome::Done, "{first:#?}");
    // Released: the next one runs.
    std::fs::remove_file(&started).unwrap();
    assert_eq!(w.run(with(req(RESTART), "service", "svc")).await.outcome, Outcome::Done);
}

fn file(path: &Path, bytes: usize, age_ms: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, vec![b'x'; bytes]).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(NOW_MS - age_ms);
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn clean_fs_removes_only_old_matching_files_under_the_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("var/log");
    let outside = d.path().join("keep");
    let old_gz = root.join("syslog.3.gz");
    let old_sub = root.join("app/app.log.1");
    let young = root.join("syslog.1.gz");
    let other = root.join("syslog");
    let too_deep = root.join("a/b/c.gz");
    let outside_gz = outside.join("precious.gz");
    file(&old_gz, 1000, 10 * DAY_MS);
    file(&old_sub, 500, 30 * DAY_MS);
    file(&young, 700, DAY_MS / 2);
    file(&other, 300, 10 * DAY_MS);
    file(&too_deep, 100, 10 * DAY_MS);
    file(&outside_gz, 900, 10 * DAY_MS);
    // A symlink inside the root pointing out of it, and a symlinked directory: never followed/removed.
    std::os::unix::fs::symlink(&outside_gz, root.join("link.gz")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("linkdir")).unwrap();

    let mut cfg = WorkerConfig::default();
    cfg.machine.clean = vec![CleanRule {
        root: root.clone(),
        globs: vec!["*.gz".into(), "*.log.?".into()],
        min_age_s: 86_400,
        max_depth: 1,
    }];
    let w = Worker::new(HOST, cfg.clone()).unwrap();

    // Dry run first: the same count, nothing removed.
    let mut r = req(CLEAN);
    r.dry_run = true;
    let dry = run(&w, &r);
    assert_eq!(dry.outcome, Outcome::DryRun, "{dry:#?}");
    assert_eq!(dry.figures.get("files_removed"), Some(&2.0), "{:?}", dry.figures);
    assert!(dry.detail.contains("would remove 2 files, 1500 bytes"), "{}", dry.detail);
    assert!(old_gz.exists() && old_sub.exists());

    let rep = run(&w, &req(CLEAN));
    assert_eq!(rep.outcome, Outcome::Done, "{rep:#?}");
    assert_eq!(rep.figures.get("files_removed"), Some(&2.0));
    assert_eq!(rep.figures.get("bytes_freed"), Some(&1500.0));
    assert!(!old_gz.exists() && !old_sub.exists(), "old matching files removed");
    for kept in [&young, &other, &too_deep, &outside_gz] {
        assert!(kept.exists(), "{} kept", kept.display());
    }
    assert!(root.join("link.gz").symlink_metadata().is_ok(), "symlink left alone");
    // Idempotent: a second run finds nothing.
    let again = run(&w, &req(CLEAN));
    assert_eq!(again.figures.get("files_removed"), Some(&0.0));

    // Limits of scope: a mount filter that matches no rule; no rules at all.
    let rep = run(&w, &with(req(CLEAN), "mount", "/srv"));
    assert_eq!(rep.outcome, Outcome::Refused, "{}", rep.detail);
    let rep = run(&Worker::new(HOST, WorkerConfig::default()).unwrap(), &req(CLEAN));
    assert_eq!(rep.outcome, Outcome::Refused);
    assert!(rep.detail.contains("no rules configured"));
}

#[test]
fn clean_fs_with_a_symlinked_root_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let real = d.path().join("real");
    let f = real.join("old.gz");
    file(&f, 10, 10 * DAY_MS);
    let link = d.path().join("logs");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let mut cfg = WorkerConfig::default();
    cfg.machine.clean = vec![CleanRule { root: link, globs: vec!["*".into()], min_age_s: 0, max_depth: 2 }];
    let rep = run(&Worker::new(HOST, cfg).unwrap(), &req(CLEAN));
    assert_eq!(rep.outcome, Outcome::Failed, "{rep:#?}");
    assert!(rep.detail.contains("not followed"), "{}", rep.detail);
    assert!(f.exists());
}

#[test]
fn reboot_is_a_dry_run_unless_enabled() {
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("rebooted");
    let fake = script(d.path(), "fake-reboot", &format!("touch {}", marker.display()));
    let mut cfg = WorkerConfig::default();
    cfg.machine.reboot_command = vec![fake];
    let rep = run(&Worker::new(HOST, cfg.clone()).unwrap(), &req(REBOOT));
    assert_eq!(rep.outcome, Outcome::Failed, "a dry-run reboot did not fix the machine: {rep:#?}");
    assert!(rep.detail.contains("dry run") && rep.detail.contains("fake-reboot"), "{}", rep.detail);
    assert!(!marker.exists());
    cfg.machine.reboot_dry_run = false;
    let rep = run(&Worker::new(HOST, cfg).unwrap(), &req(REBOOT));
    assert_eq!(rep.outcome, Outcome::Done, "{rep:#?}");
    assert!(marker.exists());
}

#[test]
fn environment_checks_must_all_pass() {
    let d = tempfile::tempdir().unwrap();
    let check = |name: &str, body: &str, stages: &[&str], timeout_s: u64| EnvCheck {
        name: name.into(),
        command: vec![script(d.path(), name, body)],
        timeout_s,
        stages: stages.iter().map(|s| s.to_string()).collect(),
    };
    let mut cfg = WorkerConfig::default();
    cfg.machine.checks = vec![
        check("ntp-synced", "exit 0", &["provision", "test"], 5),
        check("kernel-version", "exit 0", &["provision"], 5),
    ];
    let w = Worker::new(HOST, cfg.clone()).unwrap();
    let rep = run(&w, &req(Action::Provision));
    assert_eq!(rep.outcome, Outcome::Done);
    assert!(rep.detail.contains("all 2 provision checks passed"), "{}", rep.detail);
    assert_eq!(run(&w, &req(Action::Test)).detail, "all 1 test checks passed");

    cfg.machine.checks.push(check("disk-space", "echo 3% free; exit 1", &["test"], 5));
    cfg.machine.checks.push(check("hangs", "sleep 300", &["test"], 1));
    let w = Worker::new(HOST, cfg).unwrap();
    let start = Instant::now();
    let rep = run(&w, &req(Action::Test));
    assert_eq!(rep.outcome, Outcome::Failed, "{rep:#?}");
    assert!(rep.detail.contains("2 of 3 test checks failed"), "{}", rep.detail);
    assert!(rep.detail.contains("disk-space (exit Some(1))") && rep.detail.contains("hangs (timed out"));
    assert!(rep.output.contains("3% free"));
    assert!(start.elapsed() < Duration::from_secs(6), "the hung check was cut at its own 1 s");

    // No checks configured: nothing stands in the way, and the report says so.
    let rep = run(&Worker::new(HOST, WorkerConfig::default()).unwrap(), &req(Action::Test));
    assert_eq!(rep.outcome, Outcome::Done);
    assert!(rep.detail.contains("no test environment checks configured"));
}

#[test]
fn bad_requests_are_clear_refusals() {
    let w = Worker::new(HOST, WorkerConfig::default()).unwrap();
    let mut r = req(RESTART);
    r.object = ObjectId::machine("elsewhere").unwrap();
    assert!(run(&w, &r).detail.contains("not on this host"));
    let mut r = req(Action::Test);
    r.object = ObjectId::new(Kind::Dimm, HOST, Some("mc0-dimm1")).unwrap();
    assert_eq!(run(&w, &r).outcome, Outcome::Refused);
    let mut r = req(RESTART);
    for i in 0..=agent::worker::MAX_PARAMS {
        r.params.insert(format!("k{i}"), "v".into());
    }
    assert!(run(&w, &r).detail.contains("parameters"));
    // Wire form: unknown fields and unknown actions do not parse.
    let ok = r#"{"object":"machine/h1","action":{"action":"fix","fix":"reboot"},"now_ms":1}"#;
    assert!(serde_json::from_str::<ActionRequest>(ok).is_ok());
    for bad in [
        r#"{"object":"machine/h1","action":{"action":"format-everything"},"now_ms":1}"#,
        r#"{"object":"machine/h1","action":{"action":"test"},"now_ms":1,"shell":"rm -rf /"}"#,
        r#"{"object":"machine/h1 x","action":{"action":"test"},"now_ms":1}"#,
    ] {
        assert!(serde_json::from_str::<ActionRequest>(bad).is_err(), "{bad}");
    }
    assert!(Worker::new("bad host", WorkerConfig::default()).is_err());
    let mut cfg = WorkerConfig::default();
    cfg.disk.bench_seconds = -1.0;
    assert!(Worker::new(HOST, cfg).unwrap_err().to_string().contains("bench_seconds"));
}
