// Host-side entry of the CUDA products pass, so that host-only files can use it.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace pynas::cuda {

// The ProductsKernel of csrc/common/weighted_ops.h on CUDA (mixed_sum.cu),
// shared by mixed_sum_backward and edge_cost.
at::Tensor products_cuda_kernel(const at::Tensor& grad, const std::vector<at::Tensor>& x,
                                const at::Tensor& w, const std::vector<at::Tensor>& gx,
                                int64_t rows, int64_t row_numel);

}  // namespace pynas::cuda
