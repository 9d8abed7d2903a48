//! MKL's kernel choice on non-Intel x86 CPUs.
//!
//! libtorch's matrix products (every `nn.Linear`, plain or on MKL's packed weight,
//! [`terrahost_layers::packed_linear`]; most of a ViT's time) run in the oneMKL that
//! libtorch links statically. MKL picks its kernels by CPU features only
//! when `mkl_serv_intel_cpu_true()` says the CPU is an Intel one; on an AMD CPU with the
//! same AVX2 and FMA units it takes a slower generic path. libtorch calls that function
//! through its procedure linkage table, so a definition in the executable takes
//! precedence for the whole process, plugins included. This one answers "yes": MKL then
//! chooses by the features the CPU reports, which is what it does on Intel CPUs (there
//! the answer was already yes, so nothing changes).
//!
//! Measured on this project's 2-core AMD EPYC (AVX2) machine: the catalog model's
//! forward at batch 8 ran 7.5% faster (`scripts/bench/forward_pairs.py`, 16 interleaved
//! rounds, median ratio 0.925). The numbers stay within the parity tolerances (the
//! predict parity tests run through this binary).
//!
//! `TERRAHOST_MKL_VENDOR_CHECK=1` restores MKL's own answer (the function libtorch
//! links, found with `dlsym(RTLD_NEXT, ...)`). MKL asks once, at its first call.
use std::os::raw::c_int;

/// The environment variable that restores MKL's own vendor check (`1`).
pub const ENV_VENDOR_CHECK: &str = "TERRAHOST_MKL_VENDOR_CHECK";

/// Called by libtorch's MKL to decide whether it may choose its kernels by CPU features;
/// see the module docs. The linker exports it from any executable that links
/// libtorch_cpu.so, which refers to it; `host/build.rs` (and the test crate's build
/// script, for its tests and benches) also ask for the export explicitly.
#[no_mangle]
pub extern "C" fn mkl_serv_intel_cpu_true() -> c_int {
    if std::env::var(ENV_VENDOR_CHECK).is_ok_and(|v| v.trim() == "1") {
        return mkl_own_answer();
    }
    1
}

/// MKL's own `mkl_serv_intel_cpu_true` (the next definition after the executable's);
/// 0 where there is none.
fn mkl_own_answer() -> c_int {
    // SAFETY: looks a symbol up by a NUL-terminated name; a found one has MKL's
    // signature `int (void)`.
    unsafe {
        let next = libc::dlsym(libc::RTLD_NEXT, c"mkl_serv_intel_cpu_true".as_ptr());
        if next.is_null() {
            return 0;
        }
        let own: extern "C" fn() -> c_int = std::mem::transmute(next);
        own()
    }
}

/// Keeps the exported definition in every binary that links this crate: the linker
/// only keeps what something references.
pub fn keep() {
    std::hint::black_box(mkl_serv_intel_cpu_true as extern "C" fn() -> c_int);
}
