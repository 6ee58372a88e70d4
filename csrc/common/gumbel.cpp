#include "gumbel.h"

#include <algorithm>
#include <cmath>

namespace pynas {

namespace {

// `dim` of `t` (a 0-d tensor counts as 1-d), wrapped; its range is named when it is out.
RowGeometry geometry(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  const int64_t ndim = std::max<int64_t>(t.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -ndim && dim < ndim, op, ": `dim` must be in [", -ndim, ", ",
                    ndim - 1, "] for `", name, "` of shape ", t.sizes(), ", got ", dim);
  if (dim < 0) dim += ndim;
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

void check_tau(const char* op, double tau) {
  // A NaN is printed without its sign ("-nan" from ostream), as Python prints it,
  // so the fake kernel's message is the same.
  TORCH_CHECK_VALUE(std::isfinite(tau) && tau > 0, op,
                    ": `tau` must be a finite positive number, got ",
                    std::isnan(tau) ? std::fabs(tau) : tau);
}

}  // namespace

RowGeometry gumbel_geometry(const at::Tensor& logits, double tau, int64_t dim) {
  constexpr const char* op = "gumbel_softmax";
  check_floating(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.numel() > 0, op, ": `logits` must not be empty, got shape ",
                    logits.sizes());
  check_tau(op, tau);
  return geometry(op, "logits", logits, dim);
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
  check_tau(op, tau);
  return geometry(op, "soft", soft, dim);
}

}  // namespace pynas
