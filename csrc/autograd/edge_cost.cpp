// Autograd of edge_cost. C_k = sum(grad * outputs[k]) is bilinear:
// dC/dgrad = sum_k gC_k * outputs[k] (a mixed_sum) and
// dC/doutputs[k] = gC_k * grad (mixed_sum_backward's scaling half).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace pynas::autograd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct EdgeCost : public torch::autograd::Function<EdgeCost> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad,
                            at::TensorList outputs, bool per_sample) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> saved{grad};
    saved.insert(saved.end(), outputs.begin(), outputs.end());
    ctx->save_for_backward(saved);
    return ops::edge_cost(grad, outputs, per_sample);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    std::vector<at::Tensor> saved = ctx->get_saved_variables();
    const at::Tensor grad = saved[0];
    const std::vector<at::Tensor> outputs(saved.begin() + 1, saved.end());
    const size_t K = outputs.size();
    variable_list result(K + 2);  // grad, each output, per_sample
    const at::Tensor& grad_cost = grads[0];
    if (!grad_cost.defined()) return result;
    if (ctx->needs_input_grad(0)) result[0] = ops::mixed_sum(outputs, grad_cost);
    bool outputs_grad = false;
    for (size_t k = 0; k < K; ++k) outputs_grad = outputs_grad || ctx->needs_input_grad(1 + k);
    if (outputs_grad) {
      auto grad_outputs = std::get<0>(ops::mixed_sum_backward(grad, outputs, grad_cost, true, false));
      for (size_t k = 0; k < K; ++k) result[1 + k] = grad_outputs[k];
    }
    return result;
  }
};

at::Tensor edge_cost_autograd(const at::Tensor& grad, at::TensorList outputs, bool per_sample) {
  return EdgeCost::apply(grad, outputs, per_sample);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, Autograd, m) { m.impl("edge_cost", &edge_cost_autograd); }

}  // namespace pynas::autograd
