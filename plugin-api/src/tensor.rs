//! Zero-copy tensor handles.
//!
//! A `tch::Tensor` is a heap-allocated `at::Tensor*` that `at_free` deletes. Host and
//! plugins link the same libtorch shared library, so that pointer means the same thing
//! on both sides. [`TensorHandle`] *owns* one such pointer (it is moved across and freed
//! exactly once, by whoever holds it last); [`TensorRef`] *borrows* one for a lifetime and
//! never frees it.
use abi_stable::StableAbi;
use std::{ffi::c_void, fmt, marker::PhantomData, mem::ManuallyDrop};
use tch::{Device, Tensor};

/// An owned `at::Tensor*`. Dropping it frees the tensor (the storage itself is
/// reference-counted by libtorch and lives on while other tensors share it).
#[repr(C)]
#[derive(StableAbi)]
pub struct TensorHandle {
    ptr: *mut c_void,
}

// SAFETY: an at::Tensor may be moved between threads; tch::Tensor is Send too.
unsafe impl Send for TensorHandle {}

impl TensorHandle {
    /// Moves `tensor` into a handle without copying its data.
    pub fn new(tensor: Tensor) -> Self {
        let mut tensor = ManuallyDrop::new(tensor);
        Self {
            ptr: tensor.as_mut_ptr().cast(),
        }
    }

    /// Takes the tensor back out of the handle.
    pub fn into_tensor(self) -> Tensor {
        let this = ManuallyDrop::new(self);
        // SAFETY: `ptr` came from `Tensor::as_mut_ptr` of a tensor we own and never freed.
        unsafe { Tensor::from_ptr(this.ptr.cast()) }
    }

    /// Borrows the tensor without taking it out.
    pub fn as_ref(&self) -> TensorRef<'_> {
        TensorRef {
            ptr: self.ptr,
            _borrow: PhantomData,
        }
    }
}

impl From<Tensor> for TensorHandle {
    fn from(t: Tensor) -> Self {
        Self::new(t)
    }
}

impl Drop for TensorHandle {
    fn drop(&mut self) {
        // SAFETY: we own the pointer; from_ptr + drop calls at_free exactly once.
        drop(unsafe { Tensor::from_ptr(self.ptr.cast()) });
    }
}

impl fmt::Debug for TensorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref()
            .with(|t| write!(f, "TensorHandle({:?}, {:?})", t.size(), t.kind()))
    }
}

/// A borrowed `at::Tensor*`, valid for `'a`. Used for parameters and buffers, which
/// stay owned by the module that holds them.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct TensorRef<'a> {
    ptr: *mut c_void,
    _borrow: PhantomData<&'a ()>,
}

impl<'a> TensorRef<'a> {
    /// Borrows `tensor`.
    pub fn new(tensor: &'a Tensor) -> Self {
        Self {
            ptr: tensor.as_ptr() as *mut c_void,
            _borrow: PhantomData,
        }
    }

    /// A borrow of a raw `at::Tensor*` (as `Tensor::as_ptr` returns it).
    ///
    /// # Safety
    /// The pointer must point to a live `at::Tensor` for all of `'a`.
    pub unsafe fn from_raw(ptr: *const torch_sys::C_tensor) -> Self {
        Self {
            ptr: ptr as *mut c_void,
            _borrow: PhantomData,
        }
    }

    /// Runs `f` on the borrowed tensor. In-place operations (`copy_`, `set_data`)
    /// change the owner's tensor, which is how checkpoints are loaded.
    pub fn with<R>(&self, f: impl FnOnce(&Tensor) -> R) -> R {
        // SAFETY: the pointer is alive for 'a; ManuallyDrop makes sure we never free it.
        let t = ManuallyDrop::new(unsafe { Tensor::from_ptr(self.ptr.cast()) });
        f(&t)
    }

    /// A new owning tensor that shares the same storage (a reference-count increment).
    pub fn shallow_clone(&self) -> Tensor {
        self.with(|t| t.shallow_clone())
    }
}

/// A device, in a form that crosses the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RDevice {
    /// 0 = CPU, 1 = CUDA, 2 = MPS, 3 = Vulkan.
    pub kind: u8,
    /// The CUDA ordinal (0 for the others).
    pub index: u32,
}

impl From<Device> for RDevice {
    fn from(d: Device) -> Self {
        match d {
            Device::Cpu => Self { kind: 0, index: 0 },
            Device::Cuda(i) => Self {
                kind: 1,
                index: i as u32,
            },
            Device::Mps => Self { kind: 2, index: 0 },
            Device::Vulkan => Self { kind: 3, index: 0 },
        }
    }
}

impl From<RDevice> for Device {
    fn from(d: RDevice) -> Self {
        match d.kind {
            1 => Device::Cuda(d.index as usize),
            2 => Device::Mps,
            3 => Device::Vulkan,
            _ => Device::Cpu,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trip_keeps_data_and_does_not_copy() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let ptr = t.data_ptr();
        let back = TensorHandle::new(t).into_tensor();
        assert_eq!(back.data_ptr(), ptr, "no copy of the storage");
        assert_eq!(Vec::<f32>::try_from(&back).unwrap(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn borrowed_ref_writes_through_to_the_owner() {
        let owner = Tensor::zeros([2], (tch::Kind::Float, Device::Cpu));
        let r = TensorRef::new(&owner);
        let mut alias = r.shallow_clone();
        tch::no_grad(|| alias.copy_(&Tensor::from_slice(&[5.0f32, 6.0])));
        assert_eq!(Vec::<f32>::try_from(&owner).unwrap(), vec![5.0, 6.0]);
    }

    #[test]
    fn device_round_trip() {
        for d in [Device::Cpu, Device::Cuda(1), Device::Mps] {
            assert_eq!(Device::from(RDevice::from(d)), d);
        }
    }
}
