// int8 linear layers for `--precision int8`: PyTorch's dynamic quantization
// (`torch.ao.quantization.quantize_dynamic` with `per_channel_dynamic_qconfig`), run
// through libtorch's own operators (`quantized::linear_prepack`, `quantized::linear_dynamic`,
// FBGEMM on x86). Each weight is quantized once, per output channel, symmetric, and packed;
// the packed copy is cached by the weight's (and bias') identity and made again only when
// the parameter changes (its version moves) or dies. The activations are quantized per call
// (unsigned 8 bit over their own range, 7 bits as PyTorch's x86 engine runs it), which is
// what makes it "dynamic": no calibration data is needed.
#include "int8_linear.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/GradMode.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "dispatcher.h"

#define TERRAHOST_API extern "C" __attribute__((visibility("hidden")))

namespace {

using terrahost::find_op;

const c10::OperatorHandle* prepack_op() {
  static const c10::OperatorHandle* op = find_op("quantized::linear_prepack");
  return op;
}

const c10::OperatorHandle* dynamic_op() {
  static const c10::OperatorHandle* op = find_op("quantized::linear_dynamic");
  return op;
}

int64_t version_of(const at::Tensor& t) {
  // Inference tensors have no version counter (and cannot be changed in place outside
  // inference mode, where no model loads its weights).
  return !t.defined() || t.is_inference() ? 0 : t._version();
}

// One packed weight: which parameters it was made from, and when.
struct Packed {
  c10::weak_intrusive_ptr<c10::TensorImpl> weight;
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl>> bias;
  int64_t weight_version;
  int64_t bias_version;
  c10::IValue params;  // LinearPackedParamsBase

  bool dead() const { return weight.expired() || (bias.has_value() && bias->expired()); }

  bool current(const at::Tensor& w, const at::Tensor& b) const {
    if (dead()) return false;
    return weight_version == version_of(w) && bias_version == version_of(b);
  }
};

using Key = std::pair<const c10::TensorImpl*, const c10::TensorImpl*>;

std::mutex cache_mutex;
std::map<Key, Packed> cache;
std::atomic<int64_t> packed_count{0};

// The weight quantized as PyTorch's PerChannelMinMaxObserver(qint8, per_channel_symmetric)
// does it, then packed with the bias.
c10::IValue pack(const at::Tensor& w, const at::Tensor& b) {
  // libtorch 2.13 warns that quantized tensors are deprecated (to be removed in a later
  // PyTorch); terrahost pins its libtorch, so the warning would only be noise here.
  terrahost::QuietWarnings quiet;
  c10::WarningUtils::WarningHandlerGuard guard(&quiet);
  auto wf = w.detach().contiguous();
  auto lo = std::get<0>(wf.min(1)).clamp_max(0);
  auto hi = std::get<0>(wf.max(1)).clamp_min(0);
  auto scale = at::maximum(-lo, hi) / 127.5;
  scale = scale.clamp_min(std::numeric_limits<float>::epsilon());
  auto zero_points = at::zeros({wf.size(0)}, at::TensorOptions().dtype(at::kLong));
  auto q = at::quantize_per_channel(wf, scale.to(at::kDouble), zero_points, 0, at::kQInt8);
  torch::jit::Stack stack{q, b.defined() ? c10::IValue(b.detach().contiguous()) : c10::IValue()};
  prepack_op()->callBoxed(&stack);
  return stack.at(0);
}

// The packed params for (w, b), packing them on first use or when stale.
c10::IValue packed_for(const at::Tensor& w, const at::Tensor& b) {
  Key key{w.unsafeGetTensorImpl(), b.defined() ? b.unsafeGetTensorImpl() : nullptr};
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end() && it->second.current(w, b)) return it->second.params;
  }
  // Packed outside the lock (a 300M model's first forward packs hundreds of weights);
  // two threads may both pack the same weight once, which is harmless.
  std::optional<c10::weak_intrusive_ptr<c10::TensorImpl>> bias_ref;
  if (b.defined()) bias_ref.emplace(b.getIntrusivePtr());
  Packed entry{c10::weak_intrusive_ptr<c10::TensorImpl>(w.getIntrusivePtr()),
               std::move(bias_ref),
               version_of(w),
               version_of(b),
               pack(w, b)};
  std::lock_guard<std::mutex> lock(cache_mutex);
  // Drop the copies of parameters that died (a model dropped): an address may be reused.
  for (auto it = cache.begin(); it != cache.end();) {
    if (it->second.dead()) {
      it = cache.erase(it);
    } else {
      ++it;
    }
  }
  auto params = entry.params;
  cache.insert_or_assign(key, std::move(entry));
  packed_count.fetch_add(1);
  return params;
}

}  // namespace

namespace terrahost {

bool int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                 at::Tensor* out) {
  if (!int8_available()) return false;
  if (!x.defined() || !weight.defined() || x.scalar_type() != at::kFloat ||
      weight.scalar_type() != at::kFloat || !x.device().is_cpu() || !weight.device().is_cpu() ||
      weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1)) {
    return false;
  }
  if (c10::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad())) {
    return false;  // int8 has no gradient: training keeps float32
  }
  if (bias.defined() && (bias.scalar_type() != at::kFloat || bias.dim() != 1 ||
                         bias.size(0) != weight.size(0) || !bias.device().is_cpu())) {
    return false;
  }
  if (x.numel() == 0) return false;
  try {
    auto params = packed_for(weight, bias);
    // linear_dynamic takes a matrix or more; a single vector is one row.
    const bool vector = x.dim() == 1;
    torch::jit::Stack stack{vector ? x.unsqueeze(0) : x, params, /*reduce_range=*/true};
    dynamic_op()->callBoxed(&stack);
    auto y = stack.at(0).toTensor();
    *out = vector ? y.squeeze(0) : y;
    return true;
  } catch (const std::exception& e) {
    // A layer FBGEMM refuses runs in float32; said once, not on every call.
    const std::string what = e.what();
    TORCH_WARN_ONCE("--precision int8: a linear layer of weight ", weight.sizes(),
                    " runs in float32: libtorch's int8 refused it (",
                    what.substr(0, what.find('\n')), ")");
    return false;
  }
}

bool int8_available() {
  try {
    return prepack_op() != nullptr && dynamic_op() != nullptr;
  } catch (...) {
    return false;
  }
}

}  // namespace terrahost

// How many weights have been packed for int8 in this process (a weight packed again after
// it changed counts again).
TERRAHOST_API int64_t terrahost_int8_packed_count() { return packed_count.load(); }
