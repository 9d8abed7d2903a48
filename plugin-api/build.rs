//! Records, at compile time, which libtorch this crate (and therefore every plugin and
//! the host) was built against: its version and its C++ ABI flag. The loader compares
//! both sides' values before it calls into a plugin.
use std::{env, fs, path::Path};

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let lib = env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    let lib = Path::new(&lib);
    let version = torch_version(lib).unwrap_or_else(|| "unknown".to_owned());
    let cxx11 = match env::var("LIBTORCH_CXX11_ABI").ok().as_deref() {
        Some("0") => false,
        Some(_) => true,
        None => cxx11_abi(lib).unwrap_or(true),
    };
    println!("cargo:rustc-env=TERRAHOST_TORCH_VERSION={version}");
    println!(
        "cargo:rustc-env=TERRAHOST_TORCH_CXX11_ABI={}",
        if cxx11 { 1 } else { 0 }
    );
    println!("cargo:rustc-env=TERRAHOST_TORCH_LIB={}", lib.display());
    println!(
        "cargo:rustc-env=TERRAHOST_TARGET={}",
        env::var("TARGET").unwrap_or_default()
    );
    // Our own test binaries find libtorch without LD_LIBRARY_PATH.
    if !lib.as_os_str().is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    }
    // For crates that compile C++ against the same libtorch (terrahost-layers): the
    // `links` metadata reaches their build scripts as DEP_TERRAHOST_PLUGIN_API_*.
    println!("cargo:torch_cxx11_abi={}", if cxx11 { 1 } else { 0 });
    println!("cargo:rerun-if-changed=build.rs");
}

/// libtorch's version: `torch/version.py` in a PyTorch install, `build-version` in the
/// libtorch zip. The local suffix (`+cu130`, `+cpu`) is dropped: it names the CUDA
/// flavour, not the C++ API.
fn torch_version(lib: &Path) -> Option<String> {
    let root = lib.parent()?;
    if let Ok(text) = fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("__version__") {
                let v = rest
                    .trim_start_matches([' ', '='])
                    .trim()
                    .trim_matches(['\'', '"']);
                return Some(v.split('+').next().unwrap_or(v).to_owned());
            }
        }
    }
    let text = fs::read_to_string(root.join("build-version")).ok()?;
    let v = text.trim();
    Some(v.split('+').next().unwrap_or(v).to_owned())
}

/// Whether libc10 was built with the C++11 string ABI: its symbols then mention
/// `__cxx11`. A cheap scan that needs no compiler.
fn cxx11_abi(lib: &Path) -> Option<bool> {
    let bytes = fs::read(lib.join("libc10.so")).ok()?;
    let needle = b"__cxx11";
    Some(bytes.windows(needle.len()).any(|w| w == needle))
}
