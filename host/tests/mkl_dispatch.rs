//! The executable's `mkl_serv_intel_cpu_true` (host/src/mkl_dispatch.rs) is the one the
//! dynamic linker gives libtorch's MKL, in these test executables as in the engine (both
//! link the same way: the linker exports a definition that a linked shared library
//! refers to, and `host/build.rs` asks for the export explicitly too).

#[test]
fn the_global_lookup_finds_the_executables_answer_before_libtorchs() {
    terrahost::mkl_dispatch::keep();
    let ours = terrahost::mkl_dispatch::mkl_serv_intel_cpu_true as *const () as usize;
    // SAFETY: symbol lookups by NUL-terminated names.
    let (global, next) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, c"mkl_serv_intel_cpu_true".as_ptr()) as usize,
            libc::dlsym(libc::RTLD_NEXT, c"mkl_serv_intel_cpu_true".as_ptr()) as usize,
        )
    };
    assert_eq!(
        global, ours,
        "the lookup libtorch's linkage table does must find the executable's definition \
         (is -Wl,--export-dynamic-symbol=mkl_serv_intel_cpu_true missing from the link?)"
    );
    assert_ne!(next, 0, "libtorch_cpu (with MKL) defines it too");
    assert_ne!(next, ours);
    assert_eq!(terrahost::mkl_dispatch::mkl_serv_intel_cpu_true(), 1);
    // MKL's products then run with that answer and still compute products.
    let a = tch::Tensor::randn([64, 48], (tch::Kind::Float, tch::Device::Cpu));
    let b = tch::Tensor::randn([48, 32], (tch::Kind::Float, tch::Device::Cpu));
    let by_mkl = a.matmul(&b);
    let by_f64 = a
        .to_kind(tch::Kind::Double)
        .matmul(&b.to_kind(tch::Kind::Double));
    let err = (by_mkl.to_kind(tch::Kind::Double) - by_f64)
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-3, "float32 product off by {err}");
}
