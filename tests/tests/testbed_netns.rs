//! The testbed cleans up after interrupted runs: a namespace left by a
//! process that is gone is removed together with the processes still in
//! it, and a namespace of a live process is left alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::netns::reap_stale;
use testbed::{Netns, require_root};

fn listed(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn namespaces_of_dead_runs_are_reaped_with_their_processes() {
    if !require_root("namespaces_of_dead_runs_are_reaped_with_their_processes") {
        return;
    }
    // A pid that was just used and is gone.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{dead}")).exists());

    let stale = format!("zt{dead}x0-n0");
    let live = format!("zt{}x9999-n0", std::process::id());
    let stale_ns = Netns::create(&stale).unwrap();
    let live_ns = Netns::create(&live).unwrap();
    // What an interrupted run leaves running: an agent inside its node.
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while Command::new("ip").args(["netns", "pids", &stale]).output().unwrap().stdout.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(5), "sleep did not start in {stale}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stale namespace's owner is gone; dropping it must not delete it
    // again behind the reaper's back before the check.
    std::mem::forget(stale_ns);

    reap_stale();

    assert!(!listed(&stale), "{stale} was not removed");
    assert!(listed(&live), "{live} belongs to a live process and was removed");
    let started = Instant::now();
    loop {
        if agent.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the process inside {stale} was not killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(live_ns);
    assert!(!listed(&live));
}
