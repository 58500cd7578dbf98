//! Certificate lifecycle under load: a full root rotation (prepare,
//! propagate, switch, retire — each waiting for its precondition) and a CA
//! outage, while a client keeps opening connections across nodes and one
//! long transfer runs. Zero connections may fail; the transfer completes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use testbed::cluster::{
    Proc, admin_get, ca_init, ca_serve_args, example_manifests, mesh_agent_args, serial_in_dump, spawn_args, until,
    ztunnel_bin,
};
use testbed::netns::run_in;
use testbed::{Testbed, probe, require_root};

const BOOKSTORE: &str = "spiffe://cluster.local/ns/default/sa/bookstore";

fn rotate(dir: &str, step: &str) -> bool {
    Command::new(ztunnel_bin()).args(["ca", "rotate", step, "--dir", dir]).output().unwrap().status.success()
}

fn start_ca(ns: &str, dir: &str, manifests: &str, log: &Path) -> Proc {
    spawn_args(ns, &ca_serve_args(dir, manifests), log).unwrap()
}

#[test]
fn full_rotation_and_ca_outage_under_continuous_connections() {
    if !require_root("full_rotation_and_ca_outage_under_continuous_connections") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let manifests = example_manifests(root).unwrap();
    let nodes = ["node-1", "node-2"];
    let mut tb = Testbed::new(&nodes).unwrap();
    let api_ip = Ipv4Addr::new(10, 244, 1, 10);
    tb.add_pod("default/apiserver", 0, api_ip).unwrap();
    tb.add_pod("default/frontend", 1, Ipv4Addr::new(10, 244, 2, 10)).unwrap();
    for p in &tb.pods {
        probe::serve(&p.ns, &[80], &[]).unwrap();
    }
    let ns: Vec<String> = tb.nodes.iter().map(|n| n.ns.name().to_string()).collect();
    // Leaves live 10 s (renewed every ~5 s); a new root must be trusted for
    // 1 s before it signs; retire waits for the old leaves to expire.
    let ca_dir = root.join("ca");
    ca_init(&ca_dir, &["--max-ttl-secs", "10", "--default-ttl-secs", "10", "--min-propagation-secs", "1"]).unwrap();
    let (d, m) = (ca_dir.to_str().unwrap().to_string(), manifests.to_str().unwrap().to_string());
    let mut ca = Some(start_ca(&ns[0], &d, &m, &root.join("ca.log")));
    let _agents: Vec<Proc> = (0..2)
        .map(|i| {
            spawn_args(
                &ns[i],
                &mesh_agent_args(&m, nodes[i], i, &d, None, root.join(format!("{}.flows", nodes[i])).to_str().unwrap()),
                &root.join(format!("{}.log", nodes[i])),
            )
            .unwrap()
        })
        .collect();
    let ready = |i: usize| admin_get(&ns[i], 15021, "/ready").starts_with("HTTP/1.0 200");
    assert!(until(Duration::from_secs(30), || ready(0) && ready(1)), "agents not ready");
    let front = tb.pod("default/frontend").unwrap().ns.name().to_string();
    let api = SocketAddr::from((api_ip, 80));
    assert!(until(Duration::from_secs(5), || probe::tcp(&front, api)));

    // Load: a new connection every 100 ms, and one long transfer.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let opener = {
        let (front, stop, ok, failed) = (front.clone(), stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if probe::tcp(&front, api) { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let transfer = {
        let (front, stop) = (front.clone(), stop.clone());
        std::thread::spawn(move || {
            run_in(&front, move || -> Result<usize, String> {
                let mut s = TcpStream::connect_timeout(&api, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
                let mut rounds = 0;
                let mut back = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&[0x42; 64]).map_err(|e| format!("round {rounds}: {e}"))?;
                    s.read_exact(&mut back).map_err(|e| format!("round {rounds}: {e}"))?;
                    rounds += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(rounds)
            })
            .unwrap()
        })
    };

    // The rotation, every precondition waited out rather than forced.
    let t = Instant::now();
    assert!(rotate(&d, "prepare"));
    assert!(rotate(&d, "propagate"));
    assert!(!rotate(&d, "switch"), "switch must wait for propagation");
    assert!(until(Duration::from_secs(5), || rotate(&d, "switch")), "switch never allowed");
    assert!(!rotate(&d, "retire"), "retire must wait for the old leaves to expire");
    assert!(until(Duration::from_secs(20), || rotate(&d, "retire")), "retire never allowed");
    eprintln!("rotation done in {:?}", t.elapsed());
    let status = Command::new(ztunnel_bin()).args(["ca", "status", "--dir", &d, "-o", "json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["bundle"].as_array().unwrap().len(), 1, "only the new root is trusted");
    std::thread::sleep(Duration::from_secs(2));

    // CA outage shorter than the leaves' remaining life: everything keeps
    // working; once the CA is back, renewals resume.
    let before = serial_in_dump(&admin_get(&ns[1], 15021, "/config_dump"), BOOKSTORE).unwrap();
    drop(ca.take());
    std::thread::sleep(Duration::from_secs(4));
    assert!(probe::tcp(&front, api), "connections work while the CA is down");
    ca = Some(start_ca(&ns[0], &d, &m, &root.join("ca2.log")));
    let renewed = until(Duration::from_secs(15), || {
        serial_in_dump(&admin_get(&ns[1], 15021, "/config_dump"), BOOKSTORE).is_some_and(|s| s != before)
    });
    assert!(renewed, "no renewal after the CA returned");

    stop.store(true, Ordering::Relaxed);
    opener.join().unwrap();
    let rounds = transfer.join().unwrap().expect("the long transfer never broke");
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("{ok} connections opened, {failed} failed; transfer {rounds} rounds");
    assert_eq!(failed, 0, "connections failed during rotation or outage ({ok} succeeded)");
    assert!(ok > 100 && rounds > 100);
    drop(ca);
}
