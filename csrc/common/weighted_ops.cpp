#include "weighted_ops.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <limits>

namespace pynas {

namespace {

// Weights as a contiguous [rows, K] tensor in the accumulation dtype of `ref`.
// Finite float64 weights beyond float32's range saturate at its largest value
// (infinite ones stay infinite), so 0 * 1e300 is 0 as in float64, not 0 * inf = NaN.
at::Tensor weights_for_kernel(const at::Tensor& weights, const at::Tensor& ref,
                              int64_t rows, int64_t K) {
  const at::ScalarType acc = accumulate_type(ref.scalar_type());
  at::Tensor w = weights;
  if (w.scalar_type() == at::kDouble && acc == at::kFloat) {
    const double big = std::numeric_limits<float>::max();
    w = at::where(w.isinf(), w, w.clamp(-big, big));
  }
  return w.to(acc).contiguous().view({rows, K});
}

}  // namespace

at::Tensor mixed_sum_impl(at::TensorList outputs, const at::Tensor& weights,
                          MixedSumKernel kernel) {
  constexpr const char* op = "mixed_sum";
  check_outputs(op, outputs);
  const int64_t K = static_cast<int64_t>(outputs.size());
  const int64_t rows = check_weights(op, "weights", weights, outputs[0], K);
  WeightedProblem p = make_problem(outputs.vec(), rows);
  at::Tensor y = empty_in_layout(p.operands[0]);
  if (y.numel() > 0) {
    kernel(p.operands, weights_for_kernel(weights, y, rows, K), y, p.rows, p.row_numel);
  }
  return y;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_impl(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad, bool weights_grad, ProductsKernel kernel) {
  constexpr const char* op = "mixed_sum_backward";
  check_outputs(op, outputs);
  check_like(op, "grad", grad, outputs[0]);
  const int64_t K = static_cast<int64_t>(outputs.size());
  const int64_t rows = check_weights(op, "weights", weights, outputs[0], K);

  std::vector<at::Tensor> operands{grad};
  if (weights_grad) operands.insert(operands.end(), outputs.begin(), outputs.end());
  WeightedProblem p = make_problem(std::move(operands), rows);
  const at::Tensor& g = p.operands[0];
  std::vector<at::Tensor> x(p.operands.begin() + 1, p.operands.end());

  std::vector<at::Tensor> grad_outputs;
  if (outputs_grad) {
    for (int64_t k = 0; k < K; ++k) grad_outputs.push_back(empty_in_layout(g));
  }
  at::Tensor grad_weights = weights_grad ? at::zeros_like(weights, at::MemoryFormat::Contiguous)
                                         : at::empty({0}, weights.options());
  if (g.numel() > 0 && (outputs_grad || weights_grad)) {
    at::Tensor cost = kernel(g, x, weights_for_kernel(weights, g, rows, K),
                             grad_outputs, p.rows, p.row_numel);
    if (weights_grad) grad_weights.copy_(cost.view(weights.sizes()));
  }
  return {grad_outputs, grad_weights};
}

at::Tensor edge_cost_impl(const at::Tensor& grad, at::TensorList outputs,
                          bool per_sample, ProductsKernel kernel) {
  constexpr const char* op = "edge_cost";
  check_outputs(op, outputs);
  check_like(op, "grad", grad, outputs[0]);
  TORCH_CHECK_VALUE(!per_sample || grad.dim() >= 1, op,
                    ": per_sample=True needs a batch dimension, but `grad` is 0-d");
  const int64_t K = static_cast<int64_t>(outputs.size());
  const int64_t rows = per_sample ? grad.size(0) : 1;

  std::vector<at::Tensor> operands{grad};
  operands.insert(operands.end(), outputs.begin(), outputs.end());
  WeightedProblem p = make_problem(std::move(operands), rows);
  std::vector<at::Tensor> x(p.operands.begin() + 1, p.operands.end());

  const auto acc = accumulate_type(grad.scalar_type());
  std::vector<int64_t> shape = per_sample ? std::vector<int64_t>{rows, K}
                                          : std::vector<int64_t>{K};
  if (grad.numel() == 0) return at::zeros(shape, grad.options().dtype(acc));
  return kernel(p.operands[0], x, at::Tensor(), {}, p.rows, p.row_numel)
      .to(acc)
      .view(shape);
}

}  // namespace pynas
