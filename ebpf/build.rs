//! Compiles the kernel programs with clang (`-O2 -g -target bpf`) into
//! `$OUT_DIR/datapath.o`, which the crate embeds. clang-19 is preferred (the
//! README commands install it with libbpf-dev); `ZT_CLANG` overrides.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("bpf/datapath.c");
    for f in ["bpf/datapath.c", "bpf/maps.h", "bpf/services.h", "bpf/legs.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=ZT_CLANG");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("datapath.o");
    let candidates: Vec<String> = match env::var("ZT_CLANG") {
        Ok(c) => vec![c],
        Err(_) => vec!["clang-19".into(), "clang".into()],
    };
    let arch_include =
        format!("/usr/include/{}-linux-gnu", env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into()));
    for clang in &candidates {
        let status = Command::new(clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I", &arch_include, "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) => {
                eprintln!("error: {clang} failed to compile {} ({s})", src.display());
                std::process::exit(1);
            }
            Err(_) => continue,
        }
    }
    eprintln!(
        "error: no clang found (tried {candidates:?}). The eBPF datapath needs clang-19 and libbpf-dev: \
         run ./tests/run.sh or ./deploy/demo.sh, which install them, or `apt-get install clang-19 libbpf-dev`."
    );
    std::process::exit(1);
}
