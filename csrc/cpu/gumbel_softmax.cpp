// CPU kernels of gumbel_softmax and its backward: rows in parallel, each row
// computed by the same code as on CUDA (csrc/common/gumbel.h).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "../common/gumbel.h"

namespace pynas::cpu {

namespace {

// Draws the sample's Philox seed from the (seeded or default) CPU generator,
// which advances it: the same generator state gives the same sample.
uint64_t draw_seed(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cpu(
    const at::Tensor& logits, double tau, bool hard, int64_t dim,
    const std::optional<at::Generator>& generator) {
  const RowGeometry geo = gumbel_geometry(logits, tau, dim);
  const at::Tensor l = logits.contiguous();
  at::Tensor soft = at::empty_like(l, at::MemoryFormat::Contiguous);
  at::Tensor sample = at::empty_like(l, at::MemoryFormat::Contiguous);
  const uint64_t seed = draw_seed(generator);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(),
                                  "gumbel_softmax_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* lp = l.const_data_ptr<scalar_t>();
    scalar_t* sp = soft.mutable_data_ptr<scalar_t>();
    scalar_t* yp = sample.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / geo.size);
    at::parallel_for(0, geo.rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> scratch(geo.size);
      for (int64_t r = r0; r < r1; ++r) {
        gumbel_softmax_row(lp, sp, yp, geo, r, tau, hard, seed, /*offset=*/0, scratch.data());
      }
    });
  });
  return {sample, soft};
}

at::Tensor gumbel_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& soft,
                                       double tau, int64_t dim) {
  const RowGeometry geo = gumbel_backward_geometry(grad, soft, tau, dim);
  const at::Tensor g = grad.contiguous(), s = soft.contiguous();
  at::Tensor out = at::empty_like(s, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(),
                                  "gumbel_softmax_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(geo.size, 1));
    at::parallel_for(0, geo.rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) gumbel_softmax_backward_row<scalar_t, acc_t>(gp, sp, op, geo, r, tau);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CPU, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cpu);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cpu);
}

}  // namespace pynas::cpu
