// CUDA registration of edge_cost: the reduction half of mixed_sum_backward's pass.
#include <torch/library.h>

#include "../common/weighted_ops.h"
#include "products.h"

namespace pynas::cuda {

namespace {

at::Tensor edge_cost_cuda(const at::Tensor& grad, at::TensorList outputs, bool per_sample) {
  return edge_cost_impl(grad, outputs, per_sample, &products_cuda_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CUDA, m) { m.impl("edge_cost", &edge_cost_cuda); }

}  // namespace pynas::cuda
