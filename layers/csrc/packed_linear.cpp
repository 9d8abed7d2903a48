// Linear layers on a weight packed once, which tch does not expose: MKL's packed GEMM
// (`mkl::_mkl_linear`, what PyTorch's compiler uses for float32 CPU inference where
// libtorch has MKL) and oneDNN's (`mkldnn::_linear_pointwise`, with GELU fused).
// Reached through libtorch's dispatcher by name, boxed, so no C++ signature has to match.
// Errors never unwind into Rust: they are kept as a thread-local message.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/GradMode.h>

#include <string>

#include "dispatcher.h"

#define TERRAHOST_API extern "C" __attribute__((visibility("hidden")))

namespace {
thread_local std::string last_error;

using terrahost::find_op;

const c10::OperatorHandle* reorder_op() {
  static const c10::OperatorHandle* op = find_op("mkldnn::_reorder_linear_weight");
  return op;
}

const c10::OperatorHandle* linear_op() {
  static const c10::OperatorHandle* op = find_op("mkldnn::_linear_pointwise");
  return op;
}

const c10::OperatorHandle* mkl_reorder_op() {
  static const c10::OperatorHandle* op = find_op("mkl::_mkl_reorder_linear_weight");
  return op;
}

const c10::OperatorHandle* mkl_linear_op() {
  static const c10::OperatorHandle* op = find_op("mkl::_mkl_linear");
  return op;
}
}  // namespace

TERRAHOST_API const char* terrahost_last_error() { return last_error.c_str(); }

TERRAHOST_API bool terrahost_grad_enabled() { return c10::GradMode::is_enabled(); }

TERRAHOST_API bool terrahost_mkl_linear_available() {
  try {
    return mkl_reorder_op() != nullptr && mkl_linear_op() != nullptr;
  } catch (...) {
    return false;
  }
}

TERRAHOST_API bool terrahost_mkldnn_linear_available() {
  try {
    return reorder_op() != nullptr && linear_op() != nullptr;
  } catch (...) {
    return false;
  }
}

namespace {
// Calls `op` with the boxed arguments `stack` and returns its one tensor as a new heap
// at::Tensor*, or null with the message in terrahost_last_error.
at::Tensor* call_boxed(const c10::OperatorHandle* op, torch::jit::Stack stack) {
  try {
    op->callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return nullptr;
}
}  // namespace

// The weight [out, in] packed for oneDNN, or null (see terrahost_last_error).
TERRAHOST_API at::Tensor* terrahost_mkldnn_pack_linear_weight(const at::Tensor* weight) {
  return call_boxed(reorder_op(), {*weight, c10::IValue() /* batch_size: none */});
}

// x @ packed^T + bias, then exact GELU when `gelu`; null on error.
TERRAHOST_API at::Tensor* terrahost_mkldnn_linear(const at::Tensor* x, const at::Tensor* packed,
                                                  const at::Tensor* bias, bool gelu) {
  return call_boxed(linear_op(), {
                                     *x,
                                     *packed,
                                     bias ? c10::IValue(*bias) : c10::IValue(),
                                     std::string(gelu ? "gelu" : "none"),
                                     c10::List<std::optional<at::Scalar>>(),
                                     gelu ? c10::IValue(std::string("none")) : c10::IValue(),
                                 });
}

// The weight [out, in] packed for MKL's GEMM of `rows` rows, or null.
TERRAHOST_API at::Tensor* terrahost_mkl_pack_linear_weight(const at::Tensor* weight, int64_t rows) {
  return call_boxed(mkl_reorder_op(), {*weight, rows});
}

// x @ weight^T + bias through the packed copy; x must have `rows` rows (MKL's operator
// falls back to a plain GEMM on `weight` otherwise). Null on error.
TERRAHOST_API at::Tensor* terrahost_mkl_linear(const at::Tensor* x, const at::Tensor* packed,
                                               const at::Tensor* weight, const at::Tensor* bias,
                                               int64_t rows) {
  return call_boxed(mkl_linear_op(), {
                                         *x,
                                         *packed,
                                         *weight,
                                         bias ? c10::IValue(*bias) : c10::IValue(),
                                         rows,
                                     });
}
