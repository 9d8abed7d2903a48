// libtorch's CPU autocast (what `torch.autocast("cpu", dtype=torch.bfloat16)` enters in
// Python), which tch does not expose for the CPU. Like inference mode, the state is
// thread-local inside libtorch, which the host and every plugin share, so a guard the
// host enters covers the plugins' operators too. Hidden symbols: each library has its
// own copy.
#include <ATen/autocast_mode.h>

#define TERRAHOST_API extern "C" __attribute__((visibility("hidden")))

namespace {
// What the guard found, to put back when it ends (guards nest).
struct AutocastGuard {
  bool was_enabled;
  at::ScalarType was_dtype;
};
}  // namespace

// Turns CPU autocast on with bfloat16 as its lower precision. Null when it could not.
TERRAHOST_API void* terrahost_autocast_bf16_enter() {
  try {
    auto* g = new AutocastGuard{at::autocast::is_autocast_enabled(at::kCPU),
                                at::autocast::get_autocast_dtype(at::kCPU)};
    at::autocast::set_autocast_enabled(at::kCPU, true);
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::increment_nesting();
    return g;
  } catch (...) {
    return nullptr;
  }
}

TERRAHOST_API void terrahost_autocast_exit(void* guard) {
  auto* g = static_cast<AutocastGuard*>(guard);
  // Python's autocast clears its cast cache when the outermost region ends.
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(at::kCPU, g->was_enabled);
  at::autocast::set_autocast_dtype(at::kCPU, g->was_dtype);
  delete g;
}

TERRAHOST_API bool terrahost_autocast_cpu_enabled() {
  return at::autocast::is_autocast_enabled(at::kCPU);
}
