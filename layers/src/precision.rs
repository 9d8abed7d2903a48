//! The numeric precision a model runs in: float32 (the default), bfloat16, as
//! `torch.autocast("cpu", dtype=torch.bfloat16)` runs it, or int8 linear layers, as
//! `torch.ao.quantization.quantize_dynamic` makes them.
//!
//! bfloat16 is PyTorch's CPU autocast, entered through the C++ shim ([`autocast_bf16`]):
//! inside it libtorch runs the operators of its lower-precision list (convolutions,
//! linears, matrix products, attention) in bfloat16 and keeps the rest (normalisation,
//! softmax, reductions, additions with float32 tensors) in float32, whichever plugin
//! calls them. What autocast alone would do on every call, cast each weight to
//! bfloat16, [`lower_weights`] does once after loading: the weights those operators
//! read (the parameters named `…weight` with two or more dimensions, see
//! [`is_lowered`]) are stored in bfloat16, so the casts inside the forward find them
//! converted and cost nothing. Other parameters and every buffer stay float32.
//!
//! bfloat16 is fast only on CPUs that compute it natively (AVX512_BF16 or AMX on x86,
//! the `bf16` extension on ARM, see [`native_bf16`]). Elsewhere libtorch has no fast
//! bfloat16 convolution (it falls to a one-thread reference kernel, 10-50 times slower
//! than float32), so [`emulate_products`] computes autocast's convolutions and matrix
//! products as a native kernel would, in float32 on operands rounded to bfloat16 with
//! the result rounded to bfloat16: bfloat16's numbers at about float32's speed (never
//! faster), which is what measures its accuracy on such a machine.
//!
//! int8 is PyTorch's dynamic quantization of the linear layers (`quantize_dynamic` with
//! `per_channel_dynamic_qconfig`, run by libtorch's own FBGEMM operators, `csrc/int8_linear.cpp`):
//! each linear weight is quantized once, per output channel, and packed, the activations are
//! quantized per call; convolutions, attention and the rest stay float32. It is entered as
//! CPU autocast with float32 as its lower precision ([`autocast_int8`]), which casts nothing
//! and routes every `linear` call, from whichever plugin, through the int8 kernel
//! ([`int8_linears`]). A weight is quantized at the first forward that uses it and again
//! only when it changes, so loading a checkpoint first and quantizing after is automatic.
use std::fmt;
use std::str::FromStr;
use tch::{Kind, Tensor};
use terrahost_plugin_api::sdk::DynModule;

extern "C" {
    fn terrahost_autocast_bf16_enter() -> *mut std::ffi::c_void;
    fn terrahost_autocast_int8_enter() -> *mut std::ffi::c_void;
    fn terrahost_autocast_cpu_mode() -> std::os::raw::c_int;
    fn terrahost_autocast_int8_linears() -> bool;
    fn terrahost_int8_packed_count() -> i64;
    fn terrahost_autocast_off_enter() -> *mut std::ffi::c_void;
    fn terrahost_autocast_exit(guard: *mut std::ffi::c_void);
    fn terrahost_autocast_emulate_bf16_products() -> bool;
}

/// The precision of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// float32 throughout: the same numbers as PyTorch's float32 forward.
    #[default]
    Fp32,
    /// Weights stored in bfloat16 and PyTorch's CPU autocast (bfloat16) around the forward.
    Bf16,
    /// Linear layers in int8 (PyTorch's dynamic quantization); the rest float32.
    Int8,
}

impl Precision {
    /// The name `--precision` takes.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// Runs `f` in this precision: as it is for float32, inside CPU autocast (bfloat16)
    /// for bfloat16, with int8 linears for int8. Tensors `f` returns may be bfloat16;
    /// callers convert what they keep.
    pub fn run<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Precision::Fp32 => f(),
            Precision::Bf16 => autocast_bf16(f),
            Precision::Int8 => autocast_int8(f),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" | "float" => Ok(Precision::Fp32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "qint8" => Ok(Precision::Int8),
            "fp16" | "f16" | "float16" | "half" => Err(format!(
                "precision `{s}` is not supported on the CPU (libtorch computes float16 there slowly); use bf16"
            )),
            _ => Err(format!("unknown precision `{s}`; use fp32, bf16 or int8")),
        }
    }
}

/// The autocast guard: CPU autocast (bfloat16, int8 or off) holds on this thread while it
/// lives.
struct Guard(*mut std::ffi::c_void);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from terrahost_autocast_bf16_enter and is
            // released once; guards nest and are dropped in reverse order.
            unsafe { terrahost_autocast_exit(self.0) }
        }
    }
}

/// Runs `f` inside libtorch's CPU autocast with bfloat16 (left again when `f` unwinds).
pub fn autocast_bf16<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: no arguments; returns an owned guard, or null when it could not enter.
    let _guard = Guard(unsafe { terrahost_autocast_bf16_enter() });
    f()
}

/// Runs `f` with int8 linear layers: inside CPU autocast with float32 as its lower
/// precision (it casts nothing), where `linear` runs in int8 once [`int8_linears`] has
/// registered the kernel (left again when `f` unwinds).
pub fn autocast_int8<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: no arguments; returns an owned guard, or null when it could not enter.
    let _guard = Guard(unsafe { terrahost_autocast_int8_enter() });
    f()
}

/// Registers, once per process, the CPU-autocast kernel that runs `linear` in int8 inside
/// [`autocast_int8`]. False when this libtorch has no int8 operators or refused it.
pub fn int8_linears() -> bool {
    // SAFETY: no arguments; registers a kernel with libtorch's dispatcher once.
    unsafe { terrahost_autocast_int8_linears() }
}

/// How many linear weights this process has quantized to int8 so far (one quantized
/// again after it changed counts again).
pub fn int8_packed() -> i64 {
    // SAFETY: reads a counter.
    unsafe { terrahost_int8_packed_count() }
}

/// On a CPU without native bfloat16: registers, for CPU autocast and once per process,
/// the emulated bfloat16 convolutions and matrix products described in the module docs
/// (`csrc/autocast.cpp`). False when libtorch refused it (autocast then runs libtorch's
/// own, slow, bfloat16 kernels).
pub fn emulate_products() -> bool {
    // SAFETY: no arguments; registers kernels with libtorch's dispatcher once.
    unsafe { terrahost_autocast_emulate_bf16_products() }
}

/// Runs `f` with CPU autocast off (left on again afterwards if it was).
pub fn without_autocast<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: no arguments; returns an owned guard, or null when it could not enter.
    let _guard = Guard(unsafe { terrahost_autocast_off_enter() });
    f()
}

/// What CPU autocast does on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutocastMode {
    /// Off: every operator in its operands' precision.
    Off,
    /// bfloat16 ([`autocast_bf16`]).
    Bf16,
    /// int8 linear layers ([`autocast_int8`]).
    Int8,
    /// Another lower precision (float16), entered by someone else.
    Other,
}

/// The CPU autocast mode of this thread.
pub fn autocast_mode() -> AutocastMode {
    // SAFETY: reads libtorch's thread-local state.
    match unsafe { terrahost_autocast_cpu_mode() } {
        0 => AutocastMode::Off,
        1 => AutocastMode::Bf16,
        2 => AutocastMode::Int8,
        _ => AutocastMode::Other,
    }
}

/// Runs `f` in float32 when the caller runs int8 linears, as it is otherwise: for the
/// projections of `torch.nn.MultiheadAttention`, which PyTorch's dynamic quantization
/// leaves float32 (its input projection is a bare parameter and its output projection a
/// `NonDynamicallyQuantizableLinear`), so that terrahost's int8 stays PyTorch's.
pub fn float32_under_int8<T>(f: impl FnOnce() -> T) -> T {
    if autocast_mode() == AutocastMode::Int8 {
        without_autocast(f)
    } else {
        f()
    }
}

thread_local! {
    /// Inside [`float32_heads`]: the autocast mode its caller ran under.
    static BODY_MODE: std::cell::Cell<AutocastMode> = const { std::cell::Cell::new(AutocastMode::Off) };
}

/// Mixed precision for a model whose body is where the time goes and whose heads turn
/// numbers into geometry (detectors: a box regression magnifies bfloat16's rounding into
/// pixels). Runs `heads` with autocast off, so that they compute in float32; inside it,
/// [`body`] runs the backbone in the autocast mode (bfloat16 or int8) the caller of
/// `float32_heads` was under. The model's `meta` names the body's parameters
/// (`bf16_prefixes`), so that only those are stored in bfloat16.
pub fn float32_heads<T>(heads: impl FnOnce() -> T) -> T {
    let outer = BODY_MODE.with(|b| b.replace(autocast_mode()));
    struct Restore(AutocastMode);
    impl Drop for Restore {
        fn drop(&mut self) {
            BODY_MODE.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(outer);
    without_autocast(heads)
}

/// The body of a [`float32_heads`] model: `f` under the autocast mode (bfloat16 or int8)
/// the model's caller was under, as it is otherwise. Pass what it returns through
/// [`widen`].
pub fn body<T>(f: impl FnOnce() -> T) -> T {
    match BODY_MODE.with(|b| b.get()) {
        AutocastMode::Bf16 => autocast_bf16(f),
        AutocastMode::Int8 => autocast_int8(f),
        AutocastMode::Off | AutocastMode::Other => f(),
    }
}

/// A bfloat16 or float16 tensor as float32 (what a float32 head takes); others as they are.
pub fn widen(t: Tensor) -> Tensor {
    match t.kind() {
        Kind::BFloat16 | Kind::Half => t.to_kind(Kind::Float),
        _ => t,
    }
}

/// Whether CPU autocast is on, on this thread.
pub fn autocast_enabled() -> bool {
    autocast_mode() != AutocastMode::Off
}

/// What autocast does to the operands of an operator it runs in float32 (torchvision's
/// `nms` and `roi_align`): inside CPU autocast, a bfloat16 or float16 tensor becomes
/// float32; anything else, and everything outside autocast, stays as it is.
pub fn autocast_to_float(t: &Tensor) -> Result<Tensor, tch::TchError> {
    if matches!(t.kind(), Kind::BFloat16 | Kind::Half) && autocast_enabled() {
        t.f_to_kind(Kind::Float)
    } else {
        Ok(t.shallow_clone())
    }
}

/// Whether [`lower_weights`] stores the parameter `name` (with `tensor`'s shape and
/// kind) in bfloat16: a float32 `…weight` of two or more dimensions, which is what
/// linears, convolutions and embeddings read. Positional embeddings, class tokens,
/// relative-position tables, norms and biases keep float32 (autocast casts a bias when
/// its operator runs).
pub fn is_lowered(name: &str, tensor: &Tensor) -> bool {
    name.ends_with("weight") && tensor.dim() >= 2 && tensor.kind() == Kind::Float
}

/// What [`lower_weights`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lowered {
    /// Parameters now stored in bfloat16.
    pub tensors: usize,
    /// Their elements.
    pub elements: i64,
}

/// Stores the parameters [`is_lowered`] picks in bfloat16, in place (the module keeps
/// the same tensors, now holding bfloat16 data), once, after the weights are loaded.
/// `params` are the module's `(state_dict key, tensor)` pairs, shallow clones of its
/// own; with `prefixes` (a model's `bf16_prefixes`, see [`float32_heads`]) only those
/// under one of them. Inference caches derived from them ([`crate::derived`]) see the
/// new storage and derive again.
pub fn lower_weights(params: &mut [(String, Tensor)], prefixes: Option<&[String]>) -> Lowered {
    let mut done = Lowered::default();
    let in_scope = |name: &str| match prefixes {
        Some(ps) => ps.iter().any(|p| name.starts_with(p.as_str())),
        None => true,
    };
    tch::no_grad(|| {
        for (name, t) in params.iter_mut() {
            if in_scope(name) && is_lowered(name, t) {
                let lowered = t.to_kind(Kind::BFloat16);
                t.set_data(&lowered);
                done.tensors += 1;
                done.elements += t.numel() as i64;
            }
        }
    });
    done
}

/// The `state_dict` prefixes a model lowers under bfloat16, from its `meta`
/// (`bf16_prefixes`, see [`float32_heads`]); `None` when it names none (then every
/// parameter [`is_lowered`] picks is).
pub fn bf16_prefixes(model: &DynModule) -> Option<Vec<String>> {
    let meta = model.meta();
    let list = meta.get("bf16_prefixes")?.as_array()?;
    Some(
        list.iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect(),
    )
}

/// [`lower_weights`] on `model`'s parameters, within `prefixes` ([`bf16_prefixes`]).
pub fn lower_module(model: &DynModule, prefixes: Option<&[String]>) -> Lowered {
    let mut params: Vec<(String, Tensor)> = model
        .module()
        .named_parameters()
        .into_iter()
        .map(|nt| (nt.name.into_string(), nt.tensor.shallow_clone()))
        .collect();
    lower_weights(&mut params, prefixes)
}

/// The kind to derive inference copies in (folded or decomposed weights) from weights
/// of `kind`: float32 for bfloat16 and float16 weights, whose sums and products would
/// lose bits in their own precision; the weight's own kind otherwise.
pub fn compute_kind(kind: Kind) -> Kind {
    match kind {
        Kind::BFloat16 | Kind::Half => Kind::Float,
        k => k,
    }
}

/// Whether this CPU computes bfloat16 natively: AVX512_BF16 or AMX-BF16 on x86-64, the
/// BF16 extension on AArch64 (the flags of `/proc/cpuinfo`). Elsewhere bfloat16 is
/// emulated and slower than float32.
pub fn native_bf16() -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    info.lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .flat_map(|l| l.split_whitespace())
        .any(|f| matches!(f, "avx512_bf16" | "amx_bf16" | "bf16"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn names_parse_and_unsupported_ones_say_why() {
        assert_eq!("fp32".parse::<Precision>(), Ok(Precision::Fp32));
        assert_eq!("BF16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("bfloat16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!("INT8".parse::<Precision>(), Ok(Precision::Int8));
        let fp16 = "fp16".parse::<Precision>().unwrap_err();
        assert!(
            fp16.contains("not supported") && fp16.contains("bf16"),
            "{fp16}"
        );
        let other = "fp64".parse::<Precision>().unwrap_err();
        assert!(other.contains("unknown precision `fp64`"), "{other}");
        assert_eq!(Precision::default(), Precision::Fp32);
    }

    #[test]
    fn autocast_runs_matmuls_in_bf16_and_is_left_again() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        assert!(!autocast_enabled());
        let (y, inner) = Precision::Bf16.run(|| {
            let inner = autocast_bf16(|| (a.matmul(&b).kind(), autocast_enabled()));
            // still on after the inner guard ends
            assert!(autocast_enabled());
            (a.matmul(&b), inner)
        });
        assert_eq!(inner, (Kind::BFloat16, true));
        assert_eq!(y.kind(), Kind::BFloat16);
        assert!(!autocast_enabled());
        // float32 leaves everything as it is
        assert_eq!(Precision::Fp32.run(|| a.matmul(&b)).kind(), Kind::Float);
        let exact = a.matmul(&b);
        let err = (y.to_kind(Kind::Float) - &exact)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            err > 0.0 && err < 0.1 * exact.abs().max().double_value(&[]),
            "{err}"
        );
        // and left when the closure panics
        let r = std::panic::catch_unwind(|| autocast_bf16(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!autocast_enabled());
    }

    #[test]
    fn emulated_products_are_float32_products_of_bf16_operands_rounded_to_bf16() {
        assert!(emulate_products());
        assert!(emulate_products(), "a second call changes nothing");
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 5, 9, 9], opts);
        let w = Tensor::randn([4, 5, 3, 3], opts);
        let b = Tensor::randn([4], opts);
        let bf = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let got = autocast_bf16(|| x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1], 1));
        let want = bf(&x)
            .conv2d(&bf(&w), Some(&bf(&b)), [1, 1], [1, 1], [1, 1], 1)
            .to_kind(Kind::BFloat16);
        assert_eq!(got.kind(), Kind::BFloat16);
        assert!(
            got.equal(&want),
            "the conv is the float32 conv of bf16 operands"
        );
        let m = Tensor::randn([7, 5], opts);
        let wl = Tensor::randn([3, 5], opts);
        let got = autocast_bf16(|| m.linear(&wl, Some(&b.narrow(0, 0, 3))));
        let want = bf(&m)
            .linear(&bf(&wl), Some(&bf(&b.narrow(0, 0, 3))))
            .to_kind(Kind::BFloat16);
        assert!(got.equal(&want), "and so is the linear");
        // outside autocast nothing changes
        assert_eq!(m.linear(&wl, None::<&Tensor>).kind(), Kind::Float);
    }

    /// PyTorch's dynamic quantization written out in float32: the weight per output
    /// channel, symmetric int8 (scale max|w| / 127.5); the input per tensor, unsigned over
    /// its range and zero, 7 bits (PyTorch's x86 engine: `reduce_range`).
    fn dynamic_quantization(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let w_scale = w
            .abs()
            .amax([1], true)
            .divide_scalar(127.5)
            .clamp_min(f32::EPSILON as f64);
        let wq = (w / &w_scale).round().clamp(-128.0, 127.0) * &w_scale;
        let lo = x.min().double_value(&[]).min(0.0);
        let hi = x.max().double_value(&[]).max(0.0);
        let x_scale = (hi - lo) / 127.0;
        let zero = (-lo / x_scale).round().clamp(0.0, 127.0);
        let xq = ((x / x_scale).round() + zero).clamp(0.0, 127.0);
        let xq = (xq - zero) * x_scale;
        xq.linear(&wq, b)
    }

    #[test]
    fn int8_linears_are_dynamic_quantization_and_follow_weight_changes() {
        assert!(int8_linears(), "this libtorch has FBGEMM's int8 operators");
        assert!(int8_linears(), "a second call changes nothing");
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 7, 64], opts);
        let w = Tensor::randn([48, 64], opts) * 0.1;
        let b = Tensor::randn([48], opts);
        let exact = x.linear(&w, Some(&b));
        let before = int8_packed();
        let (got, mode) =
            tch::no_grad(|| autocast_int8(|| (x.linear(&w, Some(&b)), autocast_mode())));
        assert_eq!(mode, AutocastMode::Int8);
        assert_eq!(autocast_mode(), AutocastMode::Off);
        assert_eq!(got.kind(), Kind::Float);
        assert_eq!(int8_packed(), before + 1, "the weight was quantized once");
        let scale = exact.abs().max().double_value(&[]);
        let vs_formula = (&got - dynamic_quantization(&x, &w, Some(&b)))
            .abs()
            .max()
            .double_value(&[]);
        let vs_fp32 = (&got - &exact).abs().max().double_value(&[]);
        assert!(
            vs_formula < 2e-3 * scale && vs_fp32 > 5.0 * vs_formula,
            "int8 is dynamic quantization: {vs_formula} from its formula, {vs_fp32} from float32 (scale {scale})"
        );
        // a second call reuses the packed weight; a vector is one row
        let v = x.get(0).get(0);
        let row = tch::no_grad(|| autocast_int8(|| v.linear(&w, Some(&b))));
        assert_eq!(int8_packed(), before + 1);
        assert_eq!(row.size(), [48]);
        let want = dynamic_quantization(&v.unsqueeze(0), &w, Some(&b)).squeeze_dim(0);
        assert!((&row - want).abs().max().double_value(&[]) < 2e-3 * scale);
        // a weight changed in place (a checkpoint loaded afterwards) is quantized again
        tch::no_grad(|| {
            let _ = w.shallow_clone().g_mul_scalar_(-2.0);
        });
        let after = tch::no_grad(|| autocast_int8(|| x.linear(&w, None::<&Tensor>)));
        assert_eq!(int8_packed(), before + 2);
        let want = dynamic_quantization(&x, &w, None);
        assert!((&after - want).abs().max().double_value(&[]) < 4e-3 * scale);
        // outside the region, float32: the plain product, not the int8 one, and nothing packed
        let outside = x.linear(&w, Some(&b));
        let inside = tch::no_grad(|| autocast_int8(|| x.linear(&w, Some(&b))));
        let plain = x.matmul(&w.tr()) + &b;
        assert!((&outside - plain).abs().max().double_value(&[]) < 1e-5 * scale.max(1.0));
        assert!((&outside - inside).abs().max().double_value(&[]) > 10.0 * 1e-5 * scale.max(1.0));
        assert_eq!(
            int8_packed(),
            before + 3,
            "only the call inside the region packed"
        );
        // a float32 head inside an int8 model runs without it, its body with it
        let (head, body_mode) = tch::no_grad(|| {
            autocast_int8(|| float32_heads(|| (autocast_mode(), body(autocast_mode))))
        });
        assert_eq!((head, body_mode), (AutocastMode::Off, AutocastMode::Int8));
        // multi-head attention's projections stay float32 under int8, not under bf16
        let before = int8_packed();
        let mha = tch::no_grad(|| autocast_int8(|| float32_under_int8(|| x.linear(&w, Some(&b)))));
        assert!(mha.equal(&x.linear(&w, Some(&b))));
        assert_eq!(int8_packed(), before);
        assert_eq!(
            autocast_bf16(|| float32_under_int8(autocast_mode)),
            AutocastMode::Bf16
        );
    }

    #[test]
    fn only_matrix_weights_are_lowered_in_place() {
        let w = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let shared = w.shallow_clone();
        let mut params = vec![
            ("fc.weight".to_owned(), w),
            (
                "fc.bias".to_owned(),
                Tensor::randn([3], (Kind::Float, Device::Cpu)),
            ),
            (
                "norm.weight".to_owned(),
                Tensor::ones([3], (Kind::Float, Device::Cpu)),
            ),
            (
                "pos_embed".to_owned(),
                Tensor::zeros([1, 5, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "conv.weight".to_owned(),
                Tensor::randn([2, 3, 3, 3], (Kind::Float, Device::Cpu)),
            ),
        ];
        let before = shared.copy();
        let done = lower_weights(&mut params, None);
        assert_eq!(
            done,
            Lowered {
                tensors: 2,
                elements: 12 + 54
            }
        );
        // the module's own tensor (another handle to it) now holds bfloat16
        assert_eq!(shared.kind(), Kind::BFloat16);
        let err = (shared.to_kind(Kind::Float) - before)
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 0.02, "{err}");
        let kinds: Vec<Kind> = params.iter().map(|(_, t)| t.kind()).collect();
        assert_eq!(
            kinds,
            [
                Kind::BFloat16,
                Kind::Float,
                Kind::Float,
                Kind::Float,
                Kind::BFloat16
            ]
        );
    }
}
