// The pynas ops called through the dispatcher, for the autograd kernels: the
// forward re-dispatches below autograd to the device kernel, and a backward
// calls the backward ops (themselves differentiable, see pynas/functional.py).
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>

#include <optional>
#include <tuple>
#include <vector>

namespace pynas::ops {

// The backward ops' own autograd (double backward) is in Python. When nothing
// is being recorded (a backward without create_graph), skip that layer and go
// straight to the kernel: it would only add a Python call.
class SkipAutogradUnlessRecording {
 public:
  SkipAutogradUnlessRecording() {
    if (!c10::GradMode::is_enabled()) below_.emplace();
  }

 private:
  std::optional<at::AutoDispatchBelowADInplaceOrView> below_;
};

inline at::Tensor mixed_sum(at::TensorList outputs, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pynas::mixed_sum", "")
                       .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  return op.call(outputs, weights);
}

inline std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad, bool weights_grad) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("pynas::mixed_sum_backward", "")
          .typed<std::tuple<std::vector<at::Tensor>, at::Tensor>(
              const at::Tensor&, at::TensorList, const at::Tensor&, bool, bool)>();
  SkipAutogradUnlessRecording skip;
  return op.call(grad, outputs, weights, outputs_grad, weights_grad);
}

inline at::Tensor edge_cost(const at::Tensor& grad, at::TensorList outputs, bool per_sample) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pynas::edge_cost", "")
                       .typed<at::Tensor(const at::Tensor&, at::TensorList, bool)>();
  return op.call(grad, outputs, per_sample);
}

inline std::tuple<at::Tensor, at::Tensor> gumbel_softmax(
    const at::Tensor& logits, double tau, bool hard, int64_t dim,
    const std::optional<at::Generator>& generator) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pynas::gumbel_softmax", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, double, bool, int64_t,
                           const std::optional<at::Generator>&)>();
  return op.call(logits, tau, hard, dim, generator);
}

inline at::Tensor gumbel_softmax_backward(const at::Tensor& grad, const at::Tensor& soft,
                                          double tau, int64_t dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pynas::gumbel_softmax_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t)>();
  SkipAutogradUnlessRecording skip;
  return op.call(grad, soft, tau, dim);
}

}  // namespace pynas::ops
