//! `nn.Linear` for inference on CPU on a weight packed once. libtorch's default linear
//! hands the weight to MKL's GEMM on every call, which lays it out anew each time; for
//! the few rows of a ViT-B at a batch of 1 or 2 that is a noticeable part of the work.
//! [`PackedLinear`] packs the weight once (and again whenever it changes: a checkpoint
//! load, a device move) and keeps the packed copy next to the parameter, which stays the
//! `state_dict` entry. `TERRAHOST_PACKED_LINEAR` picks the packing, for calls of at most
//! [`max_rows`] rows:
//!
//! * `mkl` (the default): MKL's packed GEMM (`mkl::_mkl_linear`, what PyTorch's compiler
//!   uses for float32 CPU inference), whose numbers are MKL's plain GEMM's bit for bit.
//! * `onednn`: oneDNN's packed linear (`mkldnn::_linear_pointwise`), GELU fused.
//! * `0`: none; every call is libtorch's plain linear (MKL's GEMM).
//!
//! Measured on this project's 2-core AVX2 machine, where the engine fixes MKL's kernel
//! choice on AMD (`host/src/mkl_dispatch.rs`): on a ViT-B's four linear shapes at 197 rows
//! (batch 1), MKL's packed GEMM took 184 ms per forward's worth, its plain GEMM 199 and
//! oneDNN's packed linear 227 (2026-12-05; `scripts/bench/linear_packing.py` measures the
//! first two pair by pair: 5–10 % per shape). On the catalog model (`scripts/bench/forward_pairs.py`,
//! interleaved rounds, median of the pair ratios) plain over oneDNN-packed was 0.914 at
//! batch 1 and 0.862 at batch 2, MKL-packed over plain 0.957 at batch 1.
//!
//! oneDNN's was the default until 2026-12-05 for the sake of one corpus config,
//! `object_detection_aed_elephants_small` (TerraMind + Faster R-CNN, whose box regression
//! magnifies the backbone's float32 rounding): MKL's GEMM put a box 0.041 px from float64,
//! three times PyTorch's own float32 error there (0.014), oneDNN's 0.012. That error is one
//! draw of float32's rounding, not a defect of MKL: PyTorch's own float32 model, with its
//! backbone's rounding redrawn at its measured size, falls up to 0.069 px from float64
//! (`float32_spread` in the corpus fixture; `scripts/reference/corpus.py`), and the corpus
//! test now holds terrahost to that.
//!
//! MKL packs a weight for one row count; a call with another count packs it again (the
//! numbers are the same either way). Either packing keeps a second copy of each packed
//! weight. The packed paths run only without autograd (`no_grad` or inference mode), for
//! float32 CPU tensors on a libtorch with MKL (oneDNN); anything else takes the plain path.
use crate::derived::Derived;
use tch::{nn, Device, Kind, Tensor};

extern "C" {
    fn terrahost_last_error() -> *const std::os::raw::c_char;
    fn terrahost_grad_enabled() -> bool;
    fn terrahost_mkldnn_linear_available() -> bool;
    fn terrahost_mkl_linear_available() -> bool;
    fn terrahost_mkl_pack_linear_weight(
        weight: *const torch_sys::C_tensor,
        rows: i64,
    ) -> *mut torch_sys::C_tensor;
    fn terrahost_mkl_linear(
        x: *const torch_sys::C_tensor,
        packed: *const torch_sys::C_tensor,
        weight: *const torch_sys::C_tensor,
        bias: *const torch_sys::C_tensor,
        rows: i64,
    ) -> *mut torch_sys::C_tensor;
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

/// Whether a float32 CPU inference kernel (a packed linear, [`crate::gemm_conv`]) may
/// stand in for libtorch's operator on these tensors: all float32 on the CPU, autograd off,
/// and CPU autocast off (under `--precision bf16` or `int8` the operator must reach
/// autocast's kernel, which a direct call would bypass).
pub fn float32_inference(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float)
        && !grad_enabled()
        && !crate::precision::autocast_enabled()
}

/// The environment variable that picks the packing (`mkl`, `onednn` or `0`); see the
/// module docs.
pub const ENV_SWITCH: &str = "TERRAHOST_PACKED_LINEAR";

/// The environment variable that sets [`max_rows`].
pub const ENV_MAX_ROWS: &str = "TERRAHOST_PACKED_LINEAR_MAX_ROWS";

/// The most rows (`x.numel() / in_features`) a call may have for a packed path to run;
/// larger calls take libtorch's plain linear, where packing gains little (MKL's: within
/// the noise at 1576 rows) and its copy of the weight would cost memory for nothing.
/// 512 rows (a ViT-B batch of 1 or 2) unless `TERRAHOST_PACKED_LINEAR_MAX_ROWS` says
/// otherwise.
pub fn max_rows() -> i64 {
    static MAX: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(ENV_MAX_ROWS)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(512)
    })
}

/// Which packed kernel [`PackedLinear`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// libtorch's plain linear only.
    Off,
    /// MKL's packed GEMM.
    Mkl,
    /// oneDNN's packed linear.
    OneDnn,
}

/// The packing `TERRAHOST_PACKED_LINEAR` asks for (MKL's by default), if this libtorch has
/// its kernel; otherwise the other packing, or [`Packing::Off`] where it has neither.
pub fn packing() -> Packing {
    static PACKING: std::sync::OnceLock<Packing> = std::sync::OnceLock::new();
    *PACKING.get_or_init(|| {
        let asked = std::env::var(ENV_SWITCH).unwrap_or_default();
        let asked = match asked.trim() {
            "" | "mkl" => Packing::Mkl,
            // `1` meant "on" when oneDNN's was the only packing.
            "onednn" | "1" => Packing::OneDnn,
            "0" | "off" => Packing::Off,
            other => {
                tracing::warn!("{ENV_SWITCH}={other} is not one of mkl, onednn, 0; using mkl");
                Packing::Mkl
            }
        };
        // SAFETY: look operators up in libtorch's dispatcher; never unwind.
        let have = |p: Packing| match p {
            Packing::Off => true,
            Packing::Mkl => unsafe { terrahost_mkl_linear_available() },
            Packing::OneDnn => unsafe { terrahost_mkldnn_linear_available() },
        };
        let other = match asked {
            Packing::Mkl => Packing::OneDnn,
            _ => Packing::Mkl,
        };
        [asked, other]
            .into_iter()
            .find(|&p| have(p))
            .unwrap_or(Packing::Off)
    })
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

/// A linear layer (`y = x W^T + b`) that uses a packed weight (MKL's or oneDNN's) when
/// autograd is off (see the module docs).
pub struct PackedLinear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// oneDNN's packed copy of `weight`.
    onednn: Derived<Tensor>,
    /// MKL's packed copy of `weight`, for the row count it was packed for.
    mkl: Derived<Tensor>,
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
            onednn: Derived::new(),
            mkl: Derived::new(),
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
        let rows = x.numel() as i64 / in_features;
        let packed_ok = rows <= max_rows() && float32_inference(&[x, &self.weight]);
        let packed = match packing() {
            _ if !packed_ok => None,
            Packing::Off => None,
            Packing::OneDnn => self.onednn_forward(x, gelu),
            Packing::Mkl => self.mkl_forward(x, rows).map(|y| (y, false)),
        };
        let (y, gelu_done) = match packed {
            Some(y) => y,
            None => (x.linear(&self.weight, self.bias.as_ref()), false),
        };
        match gelu && !gelu_done {
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

    /// MKL's packed GEMM over `rows` rows; `None` when MKL refuses (then the plain path
    /// runs). The packed copy is made for one row count and made again for another.
    fn mkl_forward(&self, x: &Tensor, rows: i64) -> Option<Tensor> {
        let w = &self.weight;
        let pack = || {
            // SAFETY: `w` is a live tensor; the shim copies it into a new packed tensor.
            match wrap(unsafe { terrahost_mkl_pack_linear_weight(w.as_ptr(), rows) }) {
                Ok(packed) => Some(packed),
                Err(e) => {
                    tracing::debug!(
                        "MKL cannot pack a linear weight ({e}); using the plain linear"
                    );
                    None
                }
            }
        };
        let packed = self
            .mkl
            .get_for(rows, &[Some(w)], pack, Tensor::shallow_clone)?;
        let bias = self
            .bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b.as_ptr() as *const _);
        // SAFETY: all pointers are live tensors for the duration of the call.
        match wrap(unsafe {
            terrahost_mkl_linear(x.as_ptr(), packed.as_ptr(), w.as_ptr(), bias, rows)
        }) {
            Ok(y) => Some(y),
            Err(e) => {
                tracing::debug!("MKL's packed linear failed ({e}); using the plain linear");
                None
            }
        }
    }

    /// oneDNN's packed path, with whether the GELU was fused; `None` when oneDNN refuses
    /// (then the plain path runs).
    fn onednn_forward(&self, x: &Tensor, gelu: bool) -> Option<(Tensor, bool)> {
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
        let packed = self.onednn.get(&[Some(w)], pack, Tensor::shallow_clone)?;
        let bias = self
            .bias
            .as_ref()
            .map_or(std::ptr::null(), |b| b.as_ptr() as *const _);
        // SAFETY: all pointers are live tensors for the duration of the call.
        match wrap(unsafe { terrahost_mkldnn_linear(x.as_ptr(), packed.as_ptr(), bias, gelu) }) {
            Ok(y) => Some((y, gelu)),
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
    fn onednn_and_plain_paths_agree_and_track_weight_changes() {
        let (_vs, l, lin) = layer(64, 96);
        let x = Tensor::randn([2, 7, 64], (Kind::Float, Device::Cpu));
        let plain = lin.forward(&x);
        // SAFETY: looks operators up in libtorch's dispatcher.
        assert!(
            unsafe { terrahost_mkldnn_linear_available() },
            "this libtorch has oneDNN"
        );
        // The packed path itself (the switch only decides whether `forward` takes it).
        let (packed, _) = tch::no_grad(|| l.onednn_forward(&x, false)).expect("oneDNN packs");
        assert!((&plain - &packed).abs().max().double_value(&[]) < 1e-4);
        assert!(l.onednn.is_ready(), "the packed path ran");
        let (gelu, fused) = tch::no_grad(|| l.onednn_forward(&x, true)).expect("oneDNN packs");
        assert!(fused);
        assert!((plain.gelu("none") - &gelu).abs().max().double_value(&[]) < 1e-4);
        // a weight loaded in place afterwards is used (the packed copy is refreshed)
        tch::no_grad(|| {
            let _ = lin.ws.shallow_clone().fill_(0.5);
        });
        let (after, _) = tch::no_grad(|| l.onednn_forward(&x, false)).expect("oneDNN packs");
        let expected = lin.forward(&x);
        assert!((&after - &expected).abs().max().double_value(&[]) < 1e-4);
    }

    #[test]
    fn mkl_packing_gives_the_plain_numbers_for_every_row_count() {
        let (_vs, l, lin) = layer(64, 96);
        // SAFETY: looks operators up in libtorch's dispatcher.
        assert!(
            unsafe { terrahost_mkl_linear_available() },
            "this libtorch has MKL"
        );
        for shape in [[2i64, 7, 64], [1, 7, 64], [2, 7, 64]] {
            let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
            let rows = shape[0] * shape[1];
            let packed = tch::no_grad(|| l.mkl_forward(&x, rows)).expect("MKL packs");
            assert_eq!(packed.size(), vec![shape[0], shape[1], 96]);
            let plain = lin.forward(&x);
            assert!((&plain - &packed).abs().max().double_value(&[]) < 1e-5);
        }
        // a weight loaded in place afterwards is used (the packed copy is refreshed)
        tch::no_grad(|| {
            let _ = lin.ws.shallow_clone().fill_(0.25);
        });
        let x = Tensor::randn([3, 64], (Kind::Float, Device::Cpu));
        let after = tch::no_grad(|| l.mkl_forward(&x, 3)).expect("MKL packs");
        assert!((&after - lin.forward(&x)).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn forward_gives_the_plain_numbers_whatever_the_packing() {
        let (_vs, l, lin) = layer(64, 96);
        let x = Tensor::randn([2, 7, 64], (Kind::Float, Device::Cpu));
        let chosen = tch::no_grad(|| l.forward_gelu(&x));
        assert!(
            (lin.forward(&x).gelu("none") - &chosen)
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
