//! Embeds an rpath to the libtorch the host was linked against, so `terrahost` runs
//! without LD_LIBRARY_PATH; and exports the executable's `mkl_serv_intel_cpu_true`
//! (see `src/mkl_dispatch.rs`) so that libtorch's MKL finds it.
fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for kind in ["bins", "tests"] {
            println!(
                "cargo:rustc-link-arg-{kind}=-Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true"
            );
        }
    }
}
