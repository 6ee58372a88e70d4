// CPU kernel of edge_cost: the reduction half of mixed_sum_backward's pass.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../common/weighted_ops.h"
#include "weighted_kernels.h"

namespace pynas::cpu {

namespace {

at::Tensor edge_cost_cpu(const at::Tensor& grad, at::TensorList outputs, bool per_sample) {
  return edge_cost_impl(grad, outputs, per_sample, &products_cpu_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CPU, m) { m.impl("edge_cost", &edge_cost_cpu); }

}  // namespace pynas::cpu
