//! Embeds an rpath to the libtorch the test binaries were linked against, so the library
//! loads without LD_LIBRARY_PATH; and compiles the hostile-plugin corpus
//! (`fixture-plugins/c/*.c`, one shared library each) into `$OUT_DIR/hostile`, whose
//! path the tests get as `TERRAHOST_HOSTILE_DIR`. Its test and bench executables export
//! `mkl_serv_intel_cpu_true` as the `terrahost` binary does (`host/src/mkl_dispatch.rs`),
//! so that they run libtorch's MKL the way users get it.
use std::path::Path;

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        hostile_corpus();
        for kind in ["tests", "benches"] {
            println!(
                "cargo:rustc-link-arg-{kind}=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true"
            );
        }
    }
}

/// Compiles `src` into the shared library `out` with the C compiler `cc` finds.
fn shared_library(src: &Path, out: &Path, extra: &[&str]) {
    let compiler = cc::Build::new().get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-O0", "-o"])
        .arg(out)
        .arg(src)
        .args(extra)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {} failed", src.display());
}

fn hostile_corpus() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixture-plugins/c");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("hostile");
    // The dependency lives in a directory that no search path names: the library that
    // needs it must be refused for the missing dependency.
    let dep_dir = out.join("not-installed");
    std::fs::create_dir_all(&dep_dir).unwrap();
    shared_library(
        &src.join("missing_dep.c"),
        &dep_dir.join("libterrahost_missing_dep.so"),
        &[],
    );
    for name in [
        "ctor_abort",
        "ctor_null",
        "ctor_exit",
        "ctor_loop",
        "ctor_stdout",
        "pipe_garbage",
        "garbage_root",
    ] {
        shared_library(
            &src.join(format!("{name}.c")),
            &out.join(format!("lib{name}.so")),
            &[],
        );
    }
    let dep = format!("-L{}", dep_dir.display());
    shared_library(
        &src.join("needs_dep.c"),
        &out.join("libneeds_dep.so"),
        &[&dep, "-Wl,--no-as-needed", "-lterrahost_missing_dep"],
    );
    println!("cargo:rustc-env=TERRAHOST_HOSTILE_DIR={}", out.display());
}
