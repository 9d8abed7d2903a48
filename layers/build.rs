//! Compiles the few lines of C++ that reach what tch does not offer (`csrc/`: libtorch's
//! inference mode and CPU autocast, MKL's and oneDNN's packed linears and the operator profiler) against the headers of the libtorch that
//! tch links, with the C++ ABI plugin-api detected for it.
use std::{env, path::PathBuf};

fn main() {
    const SOURCES: [&str; 5] = [
        "csrc/inference_mode.cpp",
        "csrc/autocast.cpp",
        "csrc/int8_linear.cpp",
        "csrc/packed_linear.cpp",
        "csrc/op_profile.cpp",
    ];
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    for header in ["csrc/int8_linear.h", "csrc/dispatcher.h"] {
        println!("cargo:rerun-if-changed={header}");
    }
    let lib = PathBuf::from(env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default());
    // plugin-api's build script decided the flag (its `links` metadata), so both crates
    // agree with the manifest the host checks.
    let cxx11 = env::var("DEP_TERRAHOST_PLUGIN_API_TORCH_CXX11_ABI").map_or(true, |v| v == "1");
    let include = lib
        .parent()
        .map(|root| root.join("include"))
        .unwrap_or_default();
    cc::Build::new()
        .cpp(true)
        .files(SOURCES)
        .include(&include)
        .flag("-std=c++17")
        .flag("-w")
        .define("_GLIBCXX_USE_CXX11_ABI", if cxx11 { "1" } else { "0" })
        .compile("terrahost_layers_shim");
    // Our own test binaries find libtorch without LD_LIBRARY_PATH.
    if !lib.as_os_str().is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
}
