//! CA issuance benchmark: the raw bound (CSR validation + signing in a loop
//! on one core) against issuance over the real HTTPS API (TLS 1.3, HTTP/2,
//! connection reuse, concurrent clients) on this machine's two cores, and
//! the API's latency at half its measured peak (open loop, fixed schedule).
//!
//! Goal (issue 4): API rate >= 50% of 2x the raw one-core rate; p99 < 20 ms at
//! half that load.
//!
//! `cargo bench -p ztunnel-benches --bench ca`; `--test` (as `cargo test
//! --benches` passes) runs a short smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ca::{
    Authority, AuthorityParams, CaState, IssuePolicy, Signer, SpiffeId, TrustDomain, WorkloadIndex, validate_csr,
};
use ca_server::{CaClient, Config, DirStore, Server, SystemClock};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use time::OffsetDateTime;

const ID: &str = "spiffe://cluster.local/ns/bench/sa/app";

struct Everyone;
impl WorkloadIndex for Everyone {
    fn runs_on(&self, node: &str, ns: &str, sa: &str) -> bool {
        node == "node-1" && ns == "bench" && sa == "app"
    }
}

fn csrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.subject_alt_names = vec![SanType::URI(ID.to_string().try_into().unwrap())];
            p.serialize_request(&key).unwrap().pem().unwrap()
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let secs = if smoke { 0.3 } else { 1.5 };
    let td = TrustDomain::new("cluster.local").unwrap();
    let now = OffsetDateTime::now_utc();
    let authority = Authority::generate(&td, now, AuthorityParams::default()).unwrap();
    let pool = csrs(256);

    // Raw bound: validate + sign, one thread.
    let signer = Signer::new(&authority).unwrap();
    let policy = IssuePolicy::default();
    let id = SpiffeId::parse(ID).unwrap();
    let raw_round = || {
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed().as_secs_f64() < secs {
            let v = validate_csr(pool[n % pool.len()].as_bytes(), &td).unwrap();
            std::hint::black_box(signer.issue(&v, &id, None, &policy, now).unwrap());
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };

    // The server on its own runtime (two workers: both cores).
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path());
    let lock = store.lock().unwrap();
    store.create(&CaState::new(td.clone(), authority, policy, now), &lock).unwrap();
    store.create_token("node-1", &lock).unwrap();
    drop(lock);
    let token = store.tokens().unwrap()["node-1"].clone();
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (addr, bundle) = server_rt.block_on(async {
        let config = Config { listen: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
        let server =
            Server::bind(config, Box::new(store.clone()), Arc::new(Everyone), Arc::new(SystemClock)).await.unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let bundle = server.bundle().pem();
        tokio::spawn(server.serve(std::future::pending()));
        (addr, bundle)
    });

    // Clients: pooled HTTP/2 connections (node agents), several requests in
    // flight on each (identities renewing at once).
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (conns, inflight) = (env("ZT_CA_CONNS", 4), env("ZT_CA_INFLIGHT", 8));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env("ZT_CA_CLIENT_THREADS", 1))
        .enable_all()
        .build()
        .unwrap();
    let shared_pool = Arc::new(pool.clone());
    let clients: Vec<Arc<CaClient>> = (0..conns)
        .map(|_| Arc::new(CaClient::new(&addr, "localhost", &bundle, Some(token.clone())).unwrap()))
        .collect();
    client_rt.block_on(async {
        // Open and warm up the connections.
        for c in &clients {
            c.sign(&shared_pool[0], None).await.unwrap();
        }
    });
    let api_round = || {
        let done = Arc::new(AtomicUsize::new(0));
        client_rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for (i, c) in clients.iter().enumerate() {
                for j in 0..inflight {
                    let (c, pool, done) = (c.clone(), shared_pool.clone(), done.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut k = i * inflight + j;
                        while Instant::now() < deadline {
                            c.sign(&pool[k % pool.len()], None).await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                            k += conns * inflight;
                        }
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
            done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
        })
    };
    // Interleaved rounds (the VM's speed drifts); medians of each.
    let rounds = if smoke { 1 } else { 5 };
    let (mut raws, mut apis) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        raws.push(raw_round());
        apis.push(api_round());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw, api) = (median(&mut raws), median(&mut apis));

    // Latency at half the measured API rate, open loop.
    let rate = (api / 2.0).max(1.0);
    let n = ((rate * secs) as usize).max(20);
    // Latency is measured from each request's scheduled start, so a stall
    // counts against every request it delays (no coordinated omission).
    let latency_round = || {
        let mut v = client_rt.block_on(async {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..n {
                let at = start + Duration::from_secs_f64(k as f64 / rate);
                let (c, pool) = (clients[k % clients.len()].clone(), shared_pool.clone());
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    c.sign(&pool[k % pool.len()], None).await.unwrap();
                    at.elapsed()
                }));
            }
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await.unwrap());
            }
            v
        });
        (pct(&mut v, 0.50), pct(&mut v, 0.99))
    };
    let mut lat: Vec<(Duration, Duration)> = (0..rounds.min(3)).map(|_| latency_round()).collect();
    lat.sort_by_key(|x| x.1);
    let all_p99: Vec<String> = lat.iter().map(|x| format!("{:.2}", x.1.as_secs_f64() * 1e3)).collect();
    let (p50, p99) = lat[lat.len() / 2];
    let goal = 0.5 * 2.0 * raw;
    let ok = |b: bool| if b { "ok" } else { "MISSED" };
    println!(
        "CA issuance benchmark (median of {rounds} interleaved rounds of {secs} s,  ECDSA P-256 leaves, HTTPS h2, {conns} connections x {inflight} in flight)"
    );
    println!("  raw validate+sign, 1 core      {raw:>9.0} /s   (baseline, same run)");
    println!(
        "  API issuance, 2 cores          {api:>9.0} /s   = {:.2}x raw one-core  (goal >= {goal:.0}/s = 0.5 x 2 x raw)  {}",
        api / raw,
        ok(api >= goal)
    );
    println!(
        "  latency at {rate:.0}/s (half load)   p50 {:.2} ms  p99 {:.2} ms (median round; rounds: {} ms)  (goal p99 < 20 ms)  {}",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        all_p99.join(", "),
        ok(p99 < Duration::from_millis(20))
    );
    drop(client_rt);
    drop(server_rt);
}
