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

// Sets CPU autocast on (with `dtype` as its lower precision) or off, and returns the guard
// that puts the previous state back; null when it could not.
void* enter(bool enabled, at::ScalarType dtype) {
  try {
    auto* g = new AutocastGuard{at::autocast::is_autocast_enabled(at::kCPU),
                                at::autocast::get_autocast_dtype(at::kCPU)};
    at::autocast::set_autocast_enabled(at::kCPU, enabled);
    if (enabled) at::autocast::set_autocast_dtype(at::kCPU, dtype);
    at::autocast::increment_nesting();
    return g;
  } catch (...) {
    return nullptr;
  }
}
}  // namespace

// Turns CPU autocast on with bfloat16 as its lower precision. Null when it could not.
TERRAHOST_API void* terrahost_autocast_bf16_enter() { return enter(true, at::kBFloat16); }

// Turns CPU autocast on with float32 as its "lower" precision: every cast autocast makes
// is then a no-op, and the region only routes `linear` through the kernel below, which runs
// it in int8 (`--precision int8`). Null when it could not.
TERRAHOST_API void* terrahost_autocast_int8_enter() { return enter(true, at::kFloat); }

// Turns CPU autocast off (a region that must run in the operands' own precision).
TERRAHOST_API void* terrahost_autocast_off_enter() { return enter(false, at::kFloat); }

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

// The mode CPU autocast is in on this thread: 0 off, 1 bfloat16, 2 int8 (float32 as its
// lower precision, see terrahost_autocast_int8_enter), 3 another (float16).
TERRAHOST_API int terrahost_autocast_cpu_mode() {
  if (!at::autocast::is_autocast_enabled(at::kCPU)) return 0;
  switch (at::autocast::get_autocast_dtype(at::kCPU)) {
    case at::kBFloat16:
      return 1;
    case at::kFloat:
      return 2;
    default:
      return 3;
  }
}

// ---------------------------------------------------------------------------------------
// bfloat16 products on a CPU without native bfloat16.
//
// There libtorch has no fast bfloat16 convolution or GEMM: oneDNN's bfloat16 kernels
// need AVX512 (or AMX), so a bfloat16 convolution falls to `slow_conv2d` (one thread,
// 10-50 times slower than float32). Native bfloat16 kernels read bfloat16 operands,
// accumulate in float32 and round the result to bfloat16; the kernel below computes the
// same thing with float32 kernels: the operands rounded to bfloat16 (as autocast would)
// and widened back exactly, the product in float32, the result rounded to bfloat16. The
// numbers are those of a native bfloat16 kernel up to summation order, so a bfloat16
// run here measures bfloat16's accuracy at about float32's speed. It is registered for
// CPU autocast only, once per process, and only when the host asks (on CPUs without
// native bfloat16).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <array>
#include <atomic>

#include "dispatcher.h"
#include "int8_linear.h"

namespace {

// Whether the bfloat16 products are emulated (set once they are registered).
std::atomic<bool> emulating{false};

bool lowered_operand(const c10::IValue& v) {
  return v.isTensor() && v.toTensor().defined() && v.toTensor().is_floating_point() &&
         v.toTensor().device().is_cpu();
}

void emulated_bf16_product(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto n_args = op.schema().arguments().size();
  for (auto it = stack->end() - n_args; it != stack->end(); ++it) {
    if (lowered_operand(*it)) {
      *it = it->toTensor().to(at::kBFloat16).to(at::kFloat);
    }
  }
  {
    // Below autocast: the CPU kernel, in float32.
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
    op.callBoxed(stack);
  }
  const auto n_out = op.schema().returns().size();
  for (auto it = stack->end() - n_out; it != stack->end(); ++it) {
    if (lowered_operand(*it)) {
      *it = it->toTensor().to(at::kBFloat16);
    }
  }
}

// The operators of CPU autocast's lower-precision list that compute products (the rest
// of the list, such as attention, keeps libtorch's own autocast kernel).
const char* const EMULATED[] = {
    "conv1d",          "conv2d",          "conv3d",           "conv1d.padding",
    "conv2d.padding",  "conv3d.padding",  "conv_transpose1d", "conv_transpose2d.input",
    "conv_transpose3d.input", "addmm",    "mm",
    "bmm",             "baddbmm",         "addbmm",           "matmul",
};

// CPU autocast's kernel for `linear`, which both modes that replace libtorch's need:
// under int8 (float32 as autocast's dtype) the int8 linear of int8_linear.cpp; under
// bfloat16 the emulated product when it is registered, otherwise what libtorch's own
// autocast kernel does (floating operands other than float64 cast to bfloat16).
void autocast_linear(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto dtype = at::autocast::get_autocast_dtype(at::kCPU);
  if (dtype == at::kFloat) {
    const auto n = stack->size();
    const auto& bias = (*stack)[n - 1];
    at::Tensor out;
    if (terrahost::int8_linear((*stack)[n - 3].toTensor(), (*stack)[n - 2].toTensor(),
                               bias.isTensor() ? bias.toTensor() : at::Tensor(), &out)) {
      torch::jit::drop(*stack, 3);
      torch::jit::push(*stack, std::move(out));
      return;
    }
  } else if (dtype == at::kBFloat16 && emulating.load()) {
    emulated_bf16_product(op, stack);
    return;
  } else {
    const auto n_args = op.schema().arguments().size();
    for (auto it = stack->end() - n_args; it != stack->end(); ++it) {
      if (lowered_operand(*it) && it->toTensor().scalar_type() != at::kDouble) {
        *it = it->toTensor().to(dtype);
      }
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  op.callBoxed(stack);
}

// The autocast kernels live as long as the process.
torch::Library* autocast_library() {
  static torch::Library* lib = new torch::Library(torch::Library::IMPL, "aten",
                                                  c10::DispatchKey::AutocastCPU, __FILE__,
                                                  __LINE__);
  return lib;
}

// Registers `Kernel` for CPU autocast under each of `names` (libtorch's warning that its
// autocast kernels are overridden is silenced: that is the point). False when libtorch
// refused one.
template <void (*Kernel)(const c10::OperatorHandle&, torch::jit::Stack*), typename Names>
bool register_kernels(const Names& names) {
  terrahost::QuietWarnings quiet;
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  try {
    for (const char* name : names) {
      autocast_library()->impl(name, torch::CppFunction::makeFromBoxedFunction<Kernel>());
    }
    return true;
  } catch (...) {
    return false;
  }
}

// Registers autocast_linear (once: a function-local static; later calls only read it).
bool register_linear() {
  static const bool ok = register_kernels<&autocast_linear>(std::array<const char*, 1>{"linear"});
  return ok;
}

}  // namespace

// Registers the emulated products above for CPU autocast (once; later calls do nothing).
// False when libtorch refused a registration.
TERRAHOST_API bool terrahost_autocast_emulate_bf16_products() {
  static const bool ok = register_kernels<&emulated_bf16_product>(EMULATED) && register_linear();
  if (ok) emulating.store(true);
  return ok;
}

// Registers the int8 linear for CPU autocast's int8 mode (once). False when libtorch
// refused it or has no int8 operators.
TERRAHOST_API bool terrahost_autocast_int8_linears() {
  return terrahost::int8_available() && register_linear();
}
