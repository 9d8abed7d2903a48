// The int8 linear layer the CPU-autocast kernel of `linear` runs under `--precision int8`
// (int8_linear.cpp); shared by the two files of this shim, not exported.
#pragma once
#include <ATen/ATen.h>

namespace terrahost {

// `x W^T + b` with W quantized to int8 (once per weight, cached) and x quantized per call,
// as `torch.ao.quantization.quantize_dynamic` computes it. False when the call is not one
// int8 runs (not float32 CPU tensors, a weight that is not a matrix, a packing libtorch
// refuses): the caller then runs the float32 linear.
bool int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                 at::Tensor* out);

// Whether this libtorch has the int8 operators (built with FBGEMM or another quantized
// engine).
bool int8_available();

}  // namespace terrahost
