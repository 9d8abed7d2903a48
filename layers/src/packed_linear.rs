//! `nn.Linear` for inference on CPU with oneDNN's pre-packed weights, opt-in
//! (`TERRAHOST_PACKED_LINEAR=1`). libtorch's default linear hands the weight to MKL's
//! GEMM on every call; [`PackedLinear`] can instead pack it once into oneDNN's blocked
//! layout (and again whenever it changes: a checkpoint load, a device move) and keep the
//! packed copy next to the parameter, which stays the `state_dict` entry. The packed
//! path runs only when switched on, without autograd (`no_grad` or inference mode), for
//! float32 CPU tensors on a libtorch built with oneDNN; anything else takes the plain
//! path, with the same numbers to float rounding.
//!
//! Why it is off by default: it was faster than libtorch's plain linear for a ViT-B's
//! batches of 1 and 2 while MKL ran its generic code on AMD CPUs. Since the engine fixes
//! MKL's kernel choice (`host/src/mkl_dispatch.rs`), MKL's GEMM wins at every row count
//! measured on this project's 2-core AVX2 machine (`scripts/bench/forward_pairs.py`,
//! interleaved rounds, the catalog model, plain time over packed time, median):
//! 0.914 at batch 1 (197 rows per linear, 15 rounds), 0.862 at batch 2 (11 rounds),
//! 0.932 at batch 8 (15 rounds); and the packed copies cost a second copy of every
//! linear weight. It stays for CPUs where oneDNN's kernels win (with MKL's own vendor
//! check, `TERRAHOST_MKL_VENDOR_CHECK=1`, for one) and as the fused GELU's kernel.
use crate::derived::Derived;
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn terrahost_last_error() -> *const std::os::raw::c_char;
    fn terrahost_grad_enabled() -> bool;
    fn terrahost_mkldnn_linear_available() -> bool;
    fn terrahost_mkldnn_pack_linear_weight(
        weight: *const torch_sys::C_tensor,
    ) -> *mut torch_sys::C_tensor;
    fn terrahost_mkldnn_linear(
        x: *const torch_sys::C_tensor,
        packed: *const torch_sys::C_tensor,
        bias: *const torch_sys::C_tensor,
        gelu: bool,
    ) -> *mut torch_sys::C_tensor;
}

/// Whether autograd is recording on this thread (`torch.is_grad_enabled()`).
pub fn grad_enabled() -> bool {
    // SAFETY: reads libc10's thread-local state.
    unsafe { terrahost_grad_enabled() }
}

/// The environment variable that turns packing on (`1`); see the module docs.
pub const ENV_SWITCH: &str = "TERRAHOST_PACKED_LINEAR";

/// The environment variable that sets [`max_rows`].
pub const ENV_MAX_ROWS: &str = "TERRAHOST_PACKED_LINEAR_MAX_ROWS";

/// The most rows (`x.numel() / in_features`) a call may have for the packed path to run
/// when packing is on; larger calls take libtorch's plain linear. What packing saves is
/// the handing over of the weight that every plain call does, which matters for few rows
/// and vanishes for many: even against MKL's generic AMD code, oneDNN lost on every
/// ViT-B linear shape from about 800 rows up. 512 rows (a ViT-B batch of 1 or 2) unless
/// `TERRAHOST_PACKED_LINEAR_MAX_ROWS` says otherwise.
pub fn max_rows() -> i64 {
    static MAX: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(ENV_MAX_ROWS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(512)
    })
}

/// Whether this libtorch has oneDNN's packed linear.
fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: looks operators up in libtorch's dispatcher; never unwinds.
    *SUPPORTED.get_or_init(|| unsafe { terrahost_mkldnn_linear_available() })
}

/// Whether the packed path is used: `TERRAHOST_PACKED_LINEAR` is `1` and this libtorch
/// has oneDNN's packed linear.
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV_SWITCH).is_ok_and(|v| v.trim() == "1")) && supported()
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated thread-local string owned by the shim.
    unsafe { std::ffi::CStr::from_ptr(terrahost_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Wraps a raw result of the shim.
fn wrap(ptr: *mut torch_sys::C_tensor) -> Result<Tensor, String> {
    if ptr.is_null() {
        Err(last_error())
    } else {
        // SAFETY: the shim returns a heap at::Tensor* that we now own.
        Ok(unsafe { Tensor::from_ptr(ptr) })
    }
}

/// A linear layer (`y = x W^T + b`) that uses oneDNN's packed weight when autograd is
/// off (see the module docs).
pub struct PackedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// oneDNN's packed copy of `weight`.
    packed: Derived<Tensor>,
}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedLinear")
            .field("weight", &self.weight.size())
            .finish()
    }
}

impl PackedLinear {
    /// Wraps `linear`; its parameters keep their `state_dict` names.
    pub fn new(linear: nn::Linear) -> Self {
        Self::from_parts(linear.ws, linear.bs)
    }

    /// A layer over the variables `weight` (`[out, in]`) and `bias` (`[out]`), which
    /// stay registered where they are (shallow clones share their storage).
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            packed: Derived::new(),
        }
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x W^T + b`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, false)
    }

    /// `gelu(x W^T + b)` with the exact (erf) GELU, fused into the matmul when packed.
    pub fn forward_gelu(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: &Tensor, gelu: bool) -> Tensor {
        // Unmerged LoRA adapters of an open `lora::AdapterScope` (PEFT's lora.Linear:
        // base(x) + scale * B(A(dropout(x)))); none outside a scope.
        if let Some(d) = crate::lora::delta(&self.weight, x) {
            let y = x.linear(&self.weight, self.bias.as_ref()) + d;
            return if gelu { y.gelu("none") } else { y };
        }
        let in_features = self.weight.size().get(1).copied().unwrap_or(1).max(1);
        let packed_ok = x.device() == Device::Cpu
            && x.kind() == Kind::Float
            && x.numel() as i64 / in_features <= max_rows()
            && self.weight.kind() == Kind::Float
            && self.weight.device() == Device::Cpu
            && available()
            && !grad_enabled();
        if packed_ok {
            if let Some(y) = self.packed_forward(x, gelu) {
                return y;
            }
        }
        let y = x.linear(&self.weight, self.bias.as_ref());
        match gelu {
            false => y,
            true if grad_enabled() => y.gelu("none"),
            // Without autograd, in place: one activation-sized allocation less.
            true => {
                let mut y = y;
                let _ = y.gelu_("none");
                y
            }
        }
    }

    /// The packed path; `None` when oneDNN refuses (then the plain path runs).
    fn packed_forward(&self, x: &Tensor, gelu: bool) -> Option<Tensor> {
        let w = &self.weight;
        let pack = || {
            // SAFETY: `w` is a live tensor; the shim copies it into a new packed tensor.
            match wrap(unsafe { terrahost_mkldnn_pack_linear_weight(w.as_ptr()) }) {
                Ok(packed) => Some(packed),
                Err(e) => {
                    tracing::debug!(
                        "oneDNN cannot pack a linear weight ({e}); using the plain linear"
                    );
                    None
                }
            }
        };
        // A shallow handle, so that the lock is not held during the matmul: threads
        // running the same model only wait for each other while packing.
        let packed = self.packed.get(&[Some(w)], pack, Tensor::shallow_clone)?;
        let bias = self
            .bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b.as_ptr() as *const _);
        // SAFETY: all pointers are live tensors for the duration of the call.
        match wrap(unsafe { terrahost_mkldnn_linear(x.as_ptr(), packed.as_ptr(), bias, gelu) }) {
            Ok(y) => Some(y),
            Err(e) => {
                tracing::debug!("oneDNN packed linear failed ({e}); using the plain linear");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tch::nn::Module as _;

    fn layer(i: i64, o: i64) -> (nn::VarStore, PackedLinear, nn::Linear) {
        let vs = nn::VarStore::new(Device::Cpu);
        let lin = nn::linear(vs.root() / "fc", i, o, Default::default());
        let plain = nn::Linear {
            ws: lin.ws.shallow_clone(),
            bs: lin.bs.as_ref().map(Tensor::shallow_clone),
        };
        (vs, PackedLinear::new(lin), plain)
    }

    #[test]
    fn packed_and_plain_paths_agree_and_track_weight_changes() {
        let (_vs, l, lin) = layer(64, 96);
        let x = Tensor::randn([2, 7, 64], (Kind::Float, Device::Cpu));
        let plain = lin.forward(&x);
        assert!(supported(), "this libtorch has oneDNN");
        // The packed path itself (the switch only decides whether `forward` takes it).
        let packed = tch::no_grad(|| l.packed_forward(&x, false)).expect("oneDNN packs");
        assert!((&plain - &packed).abs().max().double_value(&[]) < 1e-4);
        assert!(l.packed.is_ready(), "the packed path ran");
        let gelu = tch::no_grad(|| l.packed_forward(&x, true)).expect("oneDNN packs");
        assert!((plain.gelu("none") - &gelu).abs().max().double_value(&[]) < 1e-4);
        // a weight loaded in place afterwards is used (the packed copy is refreshed)
        tch::no_grad(|| {
            let _ = lin.ws.shallow_clone().fill_(0.5);
        });
        let after = tch::no_grad(|| l.packed_forward(&x, false)).expect("oneDNN packs");
        let expected = lin.forward(&x);
        assert!((&after - &expected).abs().max().double_value(&[]) < 1e-4);
        // whichever path the switch picks, `forward` gives the plain numbers
        let chosen = tch::no_grad(|| l.forward_gelu(&x));
        assert!(
            (expected.gelu("none") - &chosen)
                .abs()
                .max()
                .double_value(&[])
                < 1e-4
        );
        // with autograd on, the plain path keeps the graph
        let y = l.forward(&x);
        assert!(y.requires_grad());
    }
}
