#include "gumbel.h"

#include <ATen/WrapDimUtils.h>

namespace pynas {

namespace {

RowGeometry geometry(const at::Tensor& t, int64_t dim) {
  dim = at::maybe_wrap_dim(dim, t.dim());
  RowGeometry g{1, t.dim() == 0 ? 1 : t.size(dim), 1};
  for (int64_t d = dim + 1; d < t.dim(); ++d) g.stride *= t.size(d);
  g.rows = g.size == 0 ? 0 : t.numel() / g.size;
  return g;
}

void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf ||
                       s == at::kBFloat16,
                   op, ": `", name, "` must be float32, float64, float16 or bfloat16, got ", s);
}

}  // namespace

RowGeometry gumbel_geometry(const at::Tensor& logits, double tau, int64_t dim) {
  constexpr const char* op = "gumbel_softmax";
  check_floating(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.numel() > 0, op, ": `logits` must not be empty, got shape ",
                    logits.sizes());
  TORCH_CHECK_VALUE(tau > 0, op, ": `tau` must be positive, got ", tau);
  return geometry(logits, dim);
}

RowGeometry gumbel_backward_geometry(const at::Tensor& grad, const at::Tensor& soft,
                                     double tau, int64_t dim) {
  constexpr const char* op = "gumbel_softmax_backward";
  check_floating(op, "soft", soft);
  TORCH_CHECK_TYPE(grad.scalar_type() == soft.scalar_type(), op, ": `grad` has dtype ",
                   grad.scalar_type(), " but `soft` has ", soft.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == soft.sizes(), op, ": `grad` has shape ", grad.sizes(),
                    " but `soft` has shape ", soft.sizes());
  TORCH_CHECK_VALUE(grad.device() == soft.device(), op, ": `grad` is on ", grad.device(),
                    " but `soft` is on ", soft.device());
  TORCH_CHECK_VALUE(tau > 0, op, ": `tau` must be positive, got ", tau);
  return geometry(soft, dim);
}

}  // namespace pynas
