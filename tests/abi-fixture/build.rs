//! Embeds an rpath to the libtorch the fixture was linked against (as the real plugins'
//! build.rs do), and rebuilds when the fixture's name changes.
fn main() {
    println!("cargo:rerun-if-env-changed=TERRAHOST_ABI_FIXTURE_NAME");
    println!("cargo:rerun-if-env-changed=TERRAHOST_ABI_FIXTURE_PREFIX");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
