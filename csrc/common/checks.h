// Argument validation and memory-layout unification shared by every pynas op
// and every device. Kernels only ever see dense tensors in one common layout,
// so they can treat each operand as a flat array.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <vector>

namespace pynas {

// The inputs of a "K tensors times K weights" problem (mixed_sum, its backward
// and edge_cost), flattened: `rows` weight rows (1 for a shared [K] weight
// vector, B for per-sample [B, K] weights), each covering `row_numel`
// consecutive elements of every operand in memory order.
struct WeightedProblem {
  std::vector<at::Tensor> operands;  // all in one dense layout
  int64_t rows = 1;
  int64_t row_numel = 0;
};

// Checks that `outputs` is a non-empty list of floating tensors that share
// shape, dtype and device; names `op` and the offending index on failure.
void check_outputs(const char* op, at::TensorList outputs);

// Checks `weights` against the K outputs and returns the number of weight
// rows: 1 for shape [K], B for shape [B, K] with B = outputs[0].size(0).
int64_t check_weights(const char* op, const char* name, const at::Tensor& weights,
                      const at::Tensor& ref, int64_t K);

// Checks that `grad` matches the shape, dtype and device of `ref`.
void check_like(const char* op, const char* name, const at::Tensor& t,
                const at::Tensor& ref);

// Brings every tensor to one dense layout: that of tensors[0] when it is
// non-overlapping and dense (and, when `batch_outer`, keeps each sample's
// elements consecutive), else the contiguous layout. Tensors already in that
// layout are used in place; the others are copied once.
std::vector<at::Tensor> to_common_layout(std::vector<at::Tensor> tensors,
                                         bool batch_outer);

// Allocates a tensor with the shape and the (dense) layout of `ref`.
at::Tensor empty_in_layout(const at::Tensor& ref,
                           c10::optional<at::ScalarType> dtype = c10::nullopt);

// The accumulation dtype: float64 for float64 inputs, float32 otherwise.
at::ScalarType accumulate_type(at::ScalarType t);

// Validates and lays out the operands of a weighted problem. `operands` are
// the tensors read or written element-wise; `rows` is 1 or B.
WeightedProblem make_problem(std::vector<at::Tensor> operands, int64_t rows);

}  // namespace pynas
