// CPU kernels of mixed_sum and mixed_sum_backward.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "../common/weighted_ops.h"
#include "weighted_kernels.h"

namespace pynas::cpu {

namespace {

template <typename scalar_t>
std::vector<const scalar_t*> const_ptrs(const std::vector<at::Tensor>& ts) {
  std::vector<const scalar_t*> ptrs;
  for (const auto& t : ts) ptrs.push_back(t.const_data_ptr<scalar_t>());
  return ptrs;
}

void mixed_sum_cpu_kernel(const std::vector<at::Tensor>& x, const at::Tensor& w,
                          const at::Tensor& y, int64_t rows, int64_t row_numel) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        mixed_sum_kernel<scalar_t, acc_t>(const_ptrs<scalar_t>(x),
                                          w.const_data_ptr<acc_t>(),
                                          y.mutable_data_ptr<scalar_t>(),
                                          Tiling(rows, row_numel));
      });
}

}  // namespace

at::Tensor products_cpu_kernel(const at::Tensor& grad, const std::vector<at::Tensor>& x,
                               const at::Tensor& w, const std::vector<at::Tensor>& gx,
                               int64_t rows, int64_t row_numel) {
  const bool grads = !gx.empty(), cost = !x.empty();
  const int64_t K = static_cast<int64_t>(cost ? x.size() : gx.size());
  at::Tensor out = cost ? at::empty({rows, K}, grad.options().dtype(at::kDouble))
                        : at::Tensor();
  double* out_ptr = cost ? out.mutable_data_ptr<double>() : nullptr;
  const Tiling tiling(rows, row_numel);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "products_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* g = grad.const_data_ptr<scalar_t>();
        const auto xp = const_ptrs<scalar_t>(x);
        std::vector<scalar_t*> gp;
        for (const auto& t : gx) gp.push_back(t.mutable_data_ptr<scalar_t>());
        const acc_t* wp = grads ? w.const_data_ptr<acc_t>() : nullptr;
        if (grads && cost) {
          products_kernel<scalar_t, acc_t, true, true>(g, xp, wp, gp, out_ptr, tiling);
        } else if (grads) {
          products_kernel<scalar_t, acc_t, true, false>(g, xp, wp, gp, out_ptr, tiling);
        } else {
          products_kernel<scalar_t, acc_t, false, true>(g, xp, wp, gp, out_ptr, tiling);
        }
      });
  return out;
}

namespace {

at::Tensor mixed_sum_cpu(at::TensorList outputs, const at::Tensor& weights) {
  return mixed_sum_impl(outputs, weights, &mixed_sum_cpu_kernel);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cpu(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad, bool weights_grad) {
  return mixed_sum_backward_impl(grad, outputs, weights, outputs_grad, weights_grad,
                                 &products_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CPU, m) {
  m.impl("mixed_sum", &mixed_sum_cpu);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cpu);
}

}  // namespace pynas::cpu
