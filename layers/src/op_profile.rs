//! libtorch's operator profiler, which tch does not expose: [`OpProfile::start`] records
//! every ATen operator called on this thread (the plugins' too: host and plugins share
//! one libtorch) until the guard is finished or dropped, and then writes a Chrome trace
//! (`chrome://tracing`, Perfetto; `scripts/bench/op_profile.py` sums it per operator).
//! The bench worker turns it on with `TERRAHOST_BENCH_PROFILE`.
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;

extern "C" {
    fn terrahost_op_profile_error() -> *const c_char;
    fn terrahost_op_profile_start(path: *const c_char) -> *mut c_void;
    fn terrahost_op_profile_stop(guard: *mut c_void) -> bool;
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated thread-local string owned by the shim.
    unsafe { CStr::from_ptr(terrahost_op_profile_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Recording is on (on the thread that started it) while this lives. Start and finish it
/// on the same thread: the profiler's state is thread-local.
pub struct OpProfile(*mut c_void);

impl OpProfile {
    /// Starts recording; the trace goes to `path` when the guard is finished.
    pub fn start(path: &Path) -> Result<Self, String> {
        // libtorch writes through an unchecked `std::ofstream`: a path it cannot write
        // would lose the trace silently, so it is tried here first.
        std::fs::File::create(path)
            .map_err(|e| format!("cannot write the profile {}: {e}", path.display()))?;
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a path with a NUL byte", path.display()))?;
        // SAFETY: a valid C string; the shim returns an owned guard or null.
        let guard = unsafe { terrahost_op_profile_start(c.as_ptr()) };
        if guard.is_null() {
            return Err(format!(
                "cannot start libtorch's profiler writing to {}: {}",
                path.display(),
                last_error()
            ));
        }
        Ok(Self(guard))
    }

    /// Stops recording and writes the trace.
    pub fn finish(mut self) -> Result<(), String> {
        let guard = std::mem::replace(&mut self.0, std::ptr::null_mut());
        // SAFETY: the guard came from terrahost_op_profile_start and is released once.
        if unsafe { terrahost_op_profile_stop(guard) } {
            Ok(())
        } else {
            Err(format!("libtorch's profiler: {}", last_error()))
        }
    }
}

impl Drop for OpProfile {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: as in `finish`; a failure to write is lost here (use `finish`).
            unsafe { terrahost_op_profile_stop(self.0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_names_the_operators_that_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.json");
        let p = OpProfile::start(&path).unwrap();
        let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
        let _ = a.matmul(&a).gelu("none");
        p.finish().unwrap();
        let trace: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names: Vec<&str> = trace
            .as_array()
            .expect("a Chrome trace is a list of events")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(names.contains(&"aten::matmul"), "{names:?}");
        assert!(names.contains(&"aten::gelu"), "{names:?}");
    }

    #[test]
    fn an_unwritable_path_is_an_error_not_a_crash() {
        let r = OpProfile::start(Path::new("/nonexistent-dir/trace.json"));
        assert!(
            r.is_err(),
            "a profile into a missing directory must be refused"
        );
    }
}
