// libtorch's inference mode (`c10::InferenceMode`, what `torch.inference_mode()` enters
// in Python), which tch does not expose. The state it sets is thread-local inside
// libc10, which the host and every plugin share, so a guard entered by the host covers
// the plugins' computations too. Hidden symbols: each library has its own copy.
#include <c10/core/InferenceMode.h>

#define TERRAHOST_API extern "C" __attribute__((visibility("hidden")))

TERRAHOST_API void* terrahost_inference_mode_enter() {
  try {
    return new c10::InferenceMode(true);
  } catch (...) {
    return nullptr;
  }
}

TERRAHOST_API void terrahost_inference_mode_exit(void* guard) {
  delete static_cast<c10::InferenceMode*>(guard);
}

TERRAHOST_API bool terrahost_inference_mode_enabled() {
  return c10::InferenceMode::is_enabled();
}
