// Gumbel noise shared by the CPU and CUDA kernels. Element e of a sample draws
// from its own Philox subsequence e, so a sample depends only on the seed, the
// offset and the element's index: the same on any number of threads.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace pynas {

// U in the open interval (0, 1): the top bits of the draw, shifted by half a
// step, so U = 0 and U = 1 (which give infinite noise) cannot occur.
C10_HOST_DEVICE inline float open_uniform(at::Philox4_32& rng, float) {
  return (static_cast<float>(rng() >> 9) + 0.5f) * 1.1920928955078125e-07f;  // 2^-23
}

C10_HOST_DEVICE inline double open_uniform(at::Philox4_32& rng, double) {
  const uint64_t hi = rng(), lo = rng();
  const uint64_t bits = ((hi << 32) | lo) >> 12;  // 52 bits
  return (static_cast<double>(bits) + 0.5) * 2.220446049250313e-16;  // 2^-52
}

C10_HOST_DEVICE inline float log_of(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double log_of(double x) { return ::log(x); }
C10_HOST_DEVICE inline float exp_of(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp_of(double x) { return ::exp(x); }

// G = -log(-log(U)), U ~ U(0, 1), in acc_t (float or double); `offset` counts
// 128-bit Philox blocks.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t gumbel_noise(uint64_t seed, uint64_t element,
                                          uint64_t offset) {
  at::Philox4_32 rng(seed, element, offset);
  const acc_t u = open_uniform(rng, acc_t{});
  return -log_of(-log_of(u));
}

// exp((v - max) / tau) for the softmax; the maximum itself maps to exactly 1.
// The scaled difference is computed in double: (v - max) may overflow acc_t and
// tau (a double) may lie outside its range, so finite inputs never give NaN.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t scaled_exp(acc_t v, acc_t max, double tau) {
  if (v == max) return acc_t(1);
  return exp_of(static_cast<acc_t>((static_cast<double>(v) - static_cast<double>(max)) / tau));
}

// Softmax rows along `dim` of a contiguous tensor: row r holds the `size`
// elements base(r) + d * stride, d < size.
struct RowGeometry {
  int64_t rows, size, stride;
  C10_HOST_DEVICE int64_t base(int64_t r) const {
    return (r / stride) * size * stride + r % stride;
  }
};

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline acc_t perturbed_logit(const scalar_t* logits, int64_t e, uint64_t seed,
                                             uint64_t offset) {
  return static_cast<acc_t>(logits[e]) + gumbel_noise<acc_t>(seed, e, offset);
}

// One softmax row of the sample: soft = softmax((logits + G) / tau) and the
// sample (soft, or the exact one-hot argmax when hard). The perturbed logits
// are kept in `scratch` (geo.size values) when given; without it (on CUDA,
// where a thread has no room for a row) the noise is recomputed on each pass,
// which gives the same values: it is a pure function of (seed, offset, element).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void gumbel_softmax_row(const scalar_t* logits, scalar_t* soft,
                                               scalar_t* sample, const RowGeometry& geo,
                                               int64_t row, double tau, bool hard,
                                               uint64_t seed, uint64_t offset,
                                               acc_t* scratch) {
  const int64_t base = geo.base(row);
  acc_t max = 0;
  int64_t argmax = 0;
  for (int64_t d = 0; d < geo.size; ++d) {
    const acc_t v = perturbed_logit<acc_t>(logits, base + d * geo.stride, seed, offset);
    if (scratch != nullptr) scratch[d] = v;
    if (d == 0 || v > max) max = v, argmax = d;
  }
  acc_t sum = 0;
  for (int64_t d = 0; d < geo.size; ++d) {
    const int64_t e = base + d * geo.stride;
    sum += scaled_exp(scratch != nullptr ? scratch[d]
                                         : perturbed_logit<acc_t>(logits, e, seed, offset),
                      max, tau);
  }
  for (int64_t d = 0; d < geo.size; ++d) {
    const int64_t e = base + d * geo.stride;
    const acc_t v =
        scratch != nullptr ? scratch[d] : perturbed_logit<acc_t>(logits, e, seed, offset);
    const acc_t s = scaled_exp(v, max, tau) / sum;
    soft[e] = static_cast<scalar_t>(s);
    sample[e] = hard ? static_cast<scalar_t>(d == argmax ? 1 : 0) : static_cast<scalar_t>(s);
  }
}

// One row of the backward: out = soft * (grad - sum(grad * soft)) / tau, the
// softmax Jacobian of (logits + G) / tau (straight-through when hard). The
// division is in double, and a zero numerator gives 0 however small tau is: a
// saturated softmax has zero gradient (its limit), never 0 * inf = NaN.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline void gumbel_softmax_backward_row(const scalar_t* grad,
                                                        const scalar_t* soft, scalar_t* out,
                                                        const RowGeometry& geo, int64_t row,
                                                        double tau) {
  const int64_t base = geo.base(row);
  acc_t dot = 0;
  for (int64_t d = 0; d < geo.size; ++d) {
    const int64_t e = base + d * geo.stride;
    dot += static_cast<acc_t>(grad[e]) * static_cast<acc_t>(soft[e]);
  }
  for (int64_t d = 0; d < geo.size; ++d) {
    const int64_t e = base + d * geo.stride;
    const acc_t v = static_cast<acc_t>(soft[e]) * (static_cast<acc_t>(grad[e]) - dot);
    out[e] = v == acc_t(0) ? scalar_t(0)
                           : static_cast<scalar_t>(static_cast<double>(v) / tau);
  }
}

// Checks shared by both devices.
RowGeometry gumbel_geometry(const at::Tensor& logits, double tau, int64_t dim);
RowGeometry gumbel_backward_geometry(const at::Tensor& grad, const at::Tensor& soft,
                                     double tau, int64_t dim);

}  // namespace pynas
