// What the shim's files that reach libtorch's dispatcher share (packed_linear.cpp,
// int8_linear.cpp, autocast.cpp): looking an operator up by name, and silencing the
// warnings libtorch gives for what the shim does on purpose.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

namespace terrahost {

// The operator registered under `name` (overload ""), or null when this libtorch has none
// (built without oneDNN, MKL or FBGEMM). Kept for the life of the process, as the
// dispatcher's own handles are.
inline const c10::OperatorHandle* find_op(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!op.has_value()) return nullptr;
  return new c10::OperatorHandle(*op);
}

// Drops libtorch's warnings while it lives (`WarningHandlerGuard` over it): overriding
// autocast's kernels and making quantized tensors both warn, and both are meant.
struct QuietWarnings : c10::WarningHandler {
  void process(const c10::Warning&) override {}
};

}  // namespace terrahost
