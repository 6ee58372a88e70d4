// Autograd of mixed_sum, in C++ so that a call costs microseconds, not the
// tens of microseconds of a Python autograd.Function (a DARTS network calls
// it once per edge or node, every step). The backward is the fused
// mixed_sum_backward op, asked only for the gradients autograd needs.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace pynas::autograd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct MixedSum : public torch::autograd::Function<MixedSum> {
  static at::Tensor forward(AutogradContext* ctx, at::TensorList outputs,
                            const at::Tensor& weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<at::Tensor> saved(outputs.begin(), outputs.end());
    saved.push_back(weights);
    ctx->save_for_backward(saved);
    return ops::mixed_sum(outputs, weights);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    std::vector<at::Tensor> outputs = ctx->get_saved_variables();
    const at::Tensor weights = outputs.back();
    outputs.pop_back();
    const size_t K = outputs.size();
    bool outputs_grad = false;
    for (size_t k = 0; k < K; ++k) outputs_grad = outputs_grad || ctx->needs_input_grad(k);
    const bool weights_grad = ctx->needs_input_grad(K);
    variable_list result(K + 1);
    if (!grads[0].defined() || !(outputs_grad || weights_grad)) return result;
    auto [grad_outputs, grad_weights] =
        ops::mixed_sum_backward(grads[0], outputs, weights, outputs_grad, weights_grad);
    if (outputs_grad) {
      for (size_t k = 0; k < K; ++k) result[k] = grad_outputs[k];
    }
    if (weights_grad) result[K] = grad_weights;
    return result;
  }
};

at::Tensor mixed_sum_autograd(at::TensorList outputs, const at::Tensor& weights) {
  return MixedSum::apply(outputs, weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, Autograd, m) { m.impl("mixed_sum", &mixed_sum_autograd); }

}  // namespace pynas::autograd
