//! libtorch's inference mode, which tch does not expose: like `torch.inference_mode()`,
//! it turns off autograd *and* the view and version-counter tracking that `no_grad`
//! keeps, which makes many small ops cheaper. Hosts run inference inside
//! [`inference_mode`]; models may ask [`inference_mode_enabled`] to pick a fused
//! inference-only kernel.

extern "C" {
    fn terrahost_inference_mode_enter() -> *mut std::ffi::c_void;
    fn terrahost_inference_mode_exit(guard: *mut std::ffi::c_void);
    fn terrahost_inference_mode_enabled() -> bool;
}

/// The guard: inference mode is on (on this thread) while it lives.
struct Guard(*mut std::ffi::c_void);

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from terrahost_inference_mode_enter and is
            // released once; guards nest and are dropped in reverse order.
            unsafe { terrahost_inference_mode_exit(self.0) }
        }
    }
}

/// Runs `f` in libtorch's inference mode (also when it unwinds, the mode is left).
/// Tensors made inside are inference tensors: fine as outputs, but they cannot take
/// part in autograd later.
pub fn inference_mode<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: no arguments; returns an owned guard or null if allocation failed.
    let _guard = Guard(unsafe { terrahost_inference_mode_enter() });
    f()
}

/// Whether this thread is in inference mode.
pub fn inference_mode_enabled() -> bool {
    // SAFETY: reads libc10's thread-local state.
    unsafe { terrahost_inference_mode_enabled() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn enters_nests_and_leaves() {
        assert!(!inference_mode_enabled());
        let t = inference_mode(|| {
            assert!(inference_mode_enabled());
            inference_mode(|| assert!(inference_mode_enabled()));
            assert!(inference_mode_enabled());
            Tensor::ones([2], (Kind::Float, Device::Cpu)) * 2
        });
        assert!(!inference_mode_enabled());
        assert_eq!(t.sum(Kind::Float).double_value(&[]), 4.0);
        // autograd is off inside
        let w = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let y = inference_mode(|| &w * 3);
        assert!(!y.requires_grad());
        assert!((&w * 3).requires_grad());
        // and the mode is left when the closure panics
        let r = std::panic::catch_unwind(|| inference_mode(|| panic!("boom")));
        assert!(r.is_err());
        assert!(!inference_mode_enabled());
    }
}
