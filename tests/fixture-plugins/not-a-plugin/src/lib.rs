//! A valid shared library with no terrahost root module.

/// Something to export, so the library is not empty.
#[no_mangle]
pub extern "C" fn terrahost_fixture_answer() -> i32 {
    42
}
