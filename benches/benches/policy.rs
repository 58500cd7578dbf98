//! Policy engine benchmark on a generated cluster of 1,000 namespaces,
//! 50,000 pods and 10,000 policies (`ZT_BENCH_SCALE=small` for a smoke run).
//!
//! Prints one report with the targets and, as the baseline measured in the
//! same run, the cost of a full recompile for the same change: the ratio says
//! what incremental compilation buys.
//!
//! Run: `cargo bench -p ztunnel-benches --bench policy`

use std::time::{Duration, Instant};

use policy::compile::{Compiler, Scope};
use policy::eval::{Endpoint, evaluate};
use policy::{Cluster, Object, Protocol};
use ztunnel_benches::{CountingAlloc, Rng, Scale, cluster, live_bytes, peak_bytes, pod, policies, reset_peak};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

fn main() {
    // `cargo test --benches` runs this too: keep that a quick smoke run.
    let small = std::env::var("ZT_BENCH_SCALE").is_ok_and(|s| s == "small") || std::env::args().any(|a| a == "--test");
    let scale = if small { Scale::SMALL } else { Scale::TARGET };
    let objects = cluster(scale);
    let npods = objects.iter().filter(|o| matches!(o, Object::Pod(_))).count();
    let npolicies = objects.iter().filter(|o| matches!(o, Object::NetworkPolicy(_))).count();
    println!(
        "policy benchmark: {} namespaces, {npods} pods, {npolicies} policies, {} nodes{}",
        scale.namespaces,
        scale.nodes,
        if small { " (small smoke run; targets apply to the full size)" } else { "" }
    );

    if std::env::var("ZT_BENCH_PART").is_ok_and(|p| p == "evaluate") {
        let c = Cluster::from_objects(objects);
        bench_evaluate(&c, small, &mut Rng::new(7));
        return;
    }

    // Full compile, cluster scope (every pod is an endpoint): time and peak
    // memory of the compiler, inputs excluded.
    let mut compile_times = Vec::new();
    let mut peak = 0;
    let mut compiler = None;
    for _ in 0..3 {
        drop(compiler.take());
        // Objects arrive owned (from a watch or a file); cloning the input is
        // not part of the compiler's cost.
        let input = objects.clone();
        let base = reset_peak();
        let start = Instant::now();
        let mut c = Compiler::new(Scope::Cluster);
        for o in input {
            c.apply(o);
        }
        compile_times.push(start.elapsed());
        peak = peak.max(peak_bytes() - base);
        compiler = Some(c);
    }
    let Some(mut compiler) = compiler else { return };
    let full = median(compile_times);
    let entries = compiler.tables().policy.len();
    let retained = live_bytes();
    println!(
        "  full compile           {:>10.1} ms   peak {:>7.1} MiB  (targets: < 2000 ms, < 1024 MiB)  {}",
        full.as_secs_f64() * 1e3,
        mib(peak),
        verdict(full < Duration::from_secs(2) && peak < 1 << 30)
    );
    println!(
        "    tables: {} policy entries, {} ipcache entries, {} identities; {:.1} MiB live after compile",
        entries,
        compiler.tables().ipcache.len(),
        compiler.tables().identities.len(),
        mib(retained)
    );

    // One pod label change: toggle a pod's `app` label back and forth, so
    // every iteration is a real change (identity, selection and peer sets).
    let mut rng = Rng::new(7);
    let mut label_times = Vec::new();
    let mut diff_sizes = Vec::new();
    for k in 0..201 {
        let i = 2 + rng.below(scale.namespaces - 2);
        let j = rng.below(scale.pods_per_namespace);
        let mut p = pod(scale, i, j, 1 + j % 2);
        if k % 2 == 0 {
            p.labels.insert("app".into(), "app3".into());
        }
        let start = Instant::now();
        let diff = compiler.apply(Object::Pod(p.clone()));
        label_times.push(start.elapsed());
        diff_sizes.push(diff.len());
        // restore
        compiler.apply(Object::Pod(pod(scale, i, j, 1 + j % 2)));
    }
    let label = median(label_times);

    // One policy change: widen a port range, then restore.
    let mut policy_times = Vec::new();
    for _ in 0..101 {
        let i = 2 + rng.below(scale.namespaces - 2);
        let changed = policies(i, 1).into_iter().nth(3).map(Object::NetworkPolicy);
        let original = policies(i, 0).into_iter().nth(3).map(Object::NetworkPolicy);
        let (Some(changed), Some(original)) = (changed, original) else {
            continue;
        };
        let start = Instant::now();
        let diff = compiler.apply(changed);
        policy_times.push(start.elapsed());
        diff_sizes.push(diff.len());
        compiler.apply(original);
    }
    let pol = median(policy_times);
    diff_sizes.sort();
    println!(
        "  pod label change diff  {:>10.3} ms median                 (target: < 10 ms)  {}",
        label.as_secs_f64() * 1e3,
        verdict(label < Duration::from_millis(10))
    );
    println!(
        "  policy change diff     {:>10.3} ms median                 (target: < 10 ms)  {}",
        pol.as_secs_f64() * 1e3,
        verdict(pol < Duration::from_millis(10))
    );
    println!(
        "    median diff size {} changes; incremental is {:.0}x faster than a full recompile (baseline, same run)",
        diff_sizes[diff_sizes.len() / 2],
        full.as_secs_f64() / label.max(pol).as_secs_f64()
    );

    // Reference evaluator on random pod pairs.
    let c: Cluster = compiler.cluster().clone();
    drop(compiler);
    bench_evaluate(&c, small, &mut rng);
}

/// Times the reference evaluator on random pod pairs (median of 5 rounds;
/// random pairs over 50,000 pods make this memory-latency bound, so single
/// rounds vary by ±20% on a shared VM).
fn bench_evaluate(c: &Cluster, small: bool, rng: &mut Rng) {
    let pods: Vec<Endpoint> = c.pods().map(|p| Endpoint::Pod(p.key.clone())).collect();
    let n = if small { 20_000 } else { 200_000 };
    let pairs: Vec<(usize, usize, u16)> = (0..n)
        .map(|_| (rng.below(pods.len()), rng.below(pods.len()), [80, 443, 5432, 8080, 9000][rng.below(5)]))
        .collect();
    let mut rounds = Vec::new();
    let mut allowed = 0usize;
    for _ in 0..5 {
        allowed = 0;
        let start = Instant::now();
        for (a, b, port) in &pairs {
            if evaluate(c, &pods[*a], &pods[*b], *port, Protocol::Tcp).is_ok_and(|v| v.allowed()) {
                allowed += 1;
            }
        }
        rounds.push(start.elapsed() / n as u32);
    }
    let per = median(rounds);
    println!(
        "  evaluate               {:>10.3} µs mean                   (target: < 5 µs)   {}",
        per.as_secs_f64() * 1e6,
        verdict(per < Duration::from_micros(5))
    );
    println!("    {allowed} of {n} random pairs allowed");
}
