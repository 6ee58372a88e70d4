// Autograd of gumbel_softmax: the gradient of both outputs flows through the
// soft sample (straight-through for the hard one), via gumbel_softmax_backward.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops.h"

namespace pynas::autograd {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct GumbelSoftmax : public torch::autograd::Function<GumbelSoftmax> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, double tau,
                               bool hard, int64_t dim,
                               const std::optional<at::Generator>& generator) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [sample, soft] = ops::gumbel_softmax(logits, tau, hard, dim, generator);
    ctx->save_for_backward({soft});
    ctx->saved_data["tau"] = tau;
    ctx->saved_data["dim"] = dim;
    return {sample, soft};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(5);  // logits, tau, hard, dim, generator
    at::Tensor grad = grads[0];
    if (grads[1].defined()) grad = grad.defined() ? grad.add(grads[1]) : grads[1];
    if (!grad.defined() || !ctx->needs_input_grad(0)) return result;
    const at::Tensor soft = ctx->get_saved_variables()[0];
    result[0] = ops::gumbel_softmax_backward(grad, soft, ctx->saved_data["tau"].toDouble(),
                                             ctx->saved_data["dim"].toInt());
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_autograd(
    const at::Tensor& logits, double tau, bool hard, int64_t dim,
    const std::optional<at::Generator>& generator) {
  variable_list out = GumbelSoftmax::apply(logits, tau, hard, dim, generator);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, Autograd, m) { m.impl("gumbel_softmax", &gumbel_softmax_autograd); }

}  // namespace pynas::autograd
