// CPU kernels of gumbel_softmax and its backward: one pass per softmax row.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <torch/library.h>

#include <limits>
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
    const acc_t t = static_cast<acc_t>(tau);
    const int64_t grain = std::max<int64_t>(1, 4096 / geo.size);
    at::parallel_for(0, geo.rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<acc_t> v(geo.size);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = geo.base(r);
        acc_t max = -std::numeric_limits<acc_t>::infinity();
        int64_t argmax = 0;
        for (int64_t d = 0; d < geo.size; ++d) {
          const int64_t e = base + d * geo.stride;
          v[d] = static_cast<acc_t>(lp[e]) + gumbel_noise<acc_t>(seed, e, 0);
          if (v[d] > max) max = v[d], argmax = d;
        }
        acc_t sum = 0;
        for (int64_t d = 0; d < geo.size; ++d) sum += (v[d] = scaled_exp(v[d], max, t));
        for (int64_t d = 0; d < geo.size; ++d) {
          const int64_t e = base + d * geo.stride;
          sp[e] = static_cast<scalar_t>(v[d] / sum);
          yp[e] = hard ? static_cast<scalar_t>(d == argmax ? 1 : 0) : sp[e];
        }
      }
    });
  });
  return {sample, soft};
}

// d logits = soft * (grad - sum(grad * soft, dim)) / tau: the softmax Jacobian
// of (logits + G) / tau, which is also the straight-through gradient when hard.
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
    const acc_t inv_tau = static_cast<acc_t>(1.0 / tau);
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(geo.size, 1));
    at::parallel_for(0, geo.rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t base = geo.base(r);
        acc_t dot = 0;
        for (int64_t d = 0; d < geo.size; ++d) {
          const int64_t e = base + d * geo.stride;
          dot += static_cast<acc_t>(gp[e]) * static_cast<acc_t>(sp[e]);
        }
        for (int64_t d = 0; d < geo.size; ++d) {
          const int64_t e = base + d * geo.stride;
          op[e] = static_cast<scalar_t>(static_cast<acc_t>(sp[e]) *
                                        (static_cast<acc_t>(gp[e]) - dot) * inv_tau);
        }
      }
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
