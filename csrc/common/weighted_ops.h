// Device-independent drivers of mixed_sum, mixed_sum_backward and edge_cost:
// validation, layout, allocation and result dtypes live here once; each device
// (csrc/cpu, csrc/cuda) supplies only the two kernels below.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "checks.h"

namespace pynas {

// y = sum_k w[row, k] * x[k]; x share y's dense layout, w is [rows, K] in the
// accumulation dtype.
using MixedSumKernel = void (*)(const std::vector<at::Tensor>& x, const at::Tensor& w,
                                const at::Tensor& y, int64_t rows, int64_t row_numel);

// One pass over grad: writes gx[k] = w[row, k] * grad when gx is non-empty and,
// when x is non-empty, returns cost[row, k] = sum(grad * x[k]) as a [rows, K]
// tensor in the accumulation dtype (else an undefined tensor).
using ProductsKernel = at::Tensor (*)(const at::Tensor& grad,
                                      const std::vector<at::Tensor>& x,
                                      const at::Tensor& w,
                                      const std::vector<at::Tensor>& gx, int64_t rows,
                                      int64_t row_numel);

at::Tensor mixed_sum_impl(at::TensorList outputs, const at::Tensor& weights,
                          MixedSumKernel kernel);

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_impl(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad, bool weights_grad, ProductsKernel kernel);

at::Tensor edge_cost_impl(const at::Tensor& grad, at::TensorList outputs,
                          bool per_sample, ProductsKernel kernel);

}  // namespace pynas
