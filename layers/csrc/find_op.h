// Looking an operator up in libtorch's dispatcher by name, for the shim's files that call
// operators tch does not expose (packed_linear.cpp, int8_linear.cpp).
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>

namespace terrahost {

// The operator registered under `name` (overload ""), or null when this libtorch has none
// (built without oneDNN, MKL or FBGEMM). Kept for the life of the process, as the
// dispatcher's own handles are.
inline const c10::OperatorHandle* find_op(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!op.has_value()) return nullptr;
  return new c10::OperatorHandle(*op);
}

}  // namespace terrahost
