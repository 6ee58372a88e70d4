#include "checks.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_strided.h>

#include <algorithm>
#include <numeric>

namespace pynas {

namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Dense and non-overlapping: the elements fill numel() consecutive slots.
bool is_dense(const at::Tensor& t) { return t.is_non_overlapping_and_dense(); }

// Every sample's elements are consecutive in memory (dim 0 is outermost).
bool is_batch_outer(const at::Tensor& t) {
  if (t.dim() == 0 || t.size(0) <= 1 || t.numel() == 0) return true;
  return t.stride(0) == t.numel() / t.size(0);
}

// Same memory order as `ref`: strides agree on every dimension of size > 1.
bool same_layout(const at::Tensor& t, const at::Tensor& ref) {
  for (int64_t d = 0; d < ref.dim(); ++d) {
    if (ref.size(d) > 1 && t.stride(d) != ref.stride(d)) return false;
  }
  return true;
}

}  // namespace

void check_outputs(const char* op, at::TensorList outputs) {
  TORCH_CHECK_VALUE(!outputs.empty(), op,
                    ": `outputs` must be a non-empty list of tensors");
  const at::Tensor& ref = outputs[0];
  TORCH_CHECK_TYPE(is_supported_dtype(ref.scalar_type()), op,
                   ": `outputs` must be float32, float64, float16 or bfloat16, got ",
                   ref.scalar_type());
  for (size_t k = 1; k < outputs.size(); ++k) {
    const at::Tensor& t = outputs[k];
    TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": outputs[", k, "] is on ",
                      t.device(), " but outputs[0] is on ", ref.device());
    TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": outputs[", k,
                     "] has dtype ", t.scalar_type(), " but outputs[0] has ",
                     ref.scalar_type());
    TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": outputs[", k, "] has shape ",
                      t.sizes(), " but outputs[0] has shape ", ref.sizes());
  }
}

int64_t check_weights(const char* op, const char* name, const at::Tensor& weights,
                      const at::Tensor& ref, int64_t K) {
  TORCH_CHECK_TYPE(is_supported_dtype(weights.scalar_type()), op, ": `", name,
                   "` must be a floating tensor, got ", weights.scalar_type());
  TORCH_CHECK_VALUE(weights.device() == ref.device(), op, ": `", name, "` is on ",
                    weights.device(), " but the outputs are on ", ref.device());
  if (weights.dim() == 1) {
    TORCH_CHECK_VALUE(weights.size(0) == K, op, ": `", name, "` has shape ",
                      weights.sizes(), " but there are ", K, " outputs (expected [", K,
                      "] or [B, ", K, "])");
    return 1;
  }
  TORCH_CHECK_VALUE(weights.dim() == 2 && ref.dim() >= 1 &&
                        weights.size(0) == ref.size(0) && weights.size(1) == K,
                    op, ": `", name, "` has shape ", weights.sizes(),
                    "; expected [K] = [", K, "] or [B, K] = [",
                    ref.dim() >= 1 ? ref.size(0) : -1, ", ", K,
                    "] for outputs of shape ", ref.sizes());
  return weights.size(0);
}

void check_like(const char* op, const char* name, const at::Tensor& t,
                const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": `", name, "` is on ", t.device(),
                    " but the outputs are on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": `", name,
                   "` has dtype ", t.scalar_type(), " but the outputs have ",
                   ref.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": `", name, "` has shape ",
                    t.sizes(), " but the outputs have shape ", ref.sizes());
}

std::vector<at::Tensor> to_common_layout(std::vector<at::Tensor> tensors,
                                         bool batch_outer) {
  const at::Tensor& first = tensors[0];
  at::Tensor ref = (is_dense(first) && (!batch_outer || is_batch_outer(first)))
                       ? first
                       : first.contiguous();
  for (auto& t : tensors) {
    if (t.is_same(first)) {
      t = ref;
    } else if (!(is_dense(t) && same_layout(t, ref))) {
      t = empty_in_layout(ref, t.scalar_type()).copy_(t);
    }
  }
  return tensors;
}

at::Tensor empty_in_layout(const at::Tensor& ref, c10::optional<at::ScalarType> dtype) {
  return at::empty_strided(ref.sizes(), ref.strides(),
                           ref.options().dtype(dtype.value_or(ref.scalar_type())));
}

at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

WeightedProblem make_problem(std::vector<at::Tensor> operands, int64_t rows) {
  WeightedProblem p;
  p.operands = to_common_layout(std::move(operands), /*batch_outer=*/rows > 1);
  p.rows = rows;
  const int64_t numel = p.operands[0].numel();
  p.row_numel = rows > 0 ? numel / rows : 0;
  return p;
}

}  // namespace pynas
