// CPU kernels over K same-shaped dense operands x_k and one weight row per
// block of `row_numel` consecutive elements (see pynas::WeightedProblem).
//
// Work is split into fixed tiles of kTile elements that never cross a weight
// row. Tiles are the unit of parallelism and of reduction: every tile writes
// its own partial sums, which are then added in tile order, so results do not
// depend on the number of threads (deterministic on CPU).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <vector>

namespace pynas::cpu {

constexpr int64_t kTile = 1024;

struct Tiling {
  int64_t rows, row_numel, tiles_per_row;
  Tiling(int64_t rows_, int64_t row_numel_)
      : rows(rows_),
        row_numel(row_numel_),
        tiles_per_row((row_numel_ + kTile - 1) / kTile) {}
  int64_t count() const { return rows * tiles_per_row; }
  int64_t row(int64_t t) const { return t / tiles_per_row; }
  int64_t begin(int64_t t) const {
    return row(t) * row_numel + (t % tiles_per_row) * kTile;
  }
  int64_t size(int64_t t) const {
    return std::min(kTile, row_numel - (t % tiles_per_row) * kTile);
  }
};

// Grain (in tiles) so that a thread gets at least ~256 KiB of traffic.
inline int64_t tile_grain(int64_t K) {
  return std::max<int64_t>(1, 64 / std::max<int64_t>(K, 1));
}

// sum_j a[j] * b[j] with independent lanes (vectorisable without reassociating
// a single accumulator) folded in a fixed order.
template <typename acc_t, typename scalar_t>
inline acc_t dot_tile(const acc_t* a, const scalar_t* b, int64_t n) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lane[l] += a[j + l] * static_cast<acc_t>(b[j + l]);
    }
  }
  acc_t tail = 0;
  for (; j < n; ++j) tail += a[j] * static_cast<acc_t>(b[j]);
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lane[l] += lane[l + width];
  }
  return lane[0] + tail;
}

// y = sum_k w[row, k] * x_k, accumulated in acc_t.
template <typename scalar_t, typename acc_t>
void mixed_sum_kernel(const std::vector<const scalar_t*>& x, const acc_t* w,
                      scalar_t* y, const Tiling& tiling) {
  const int64_t K = static_cast<int64_t>(x.size());
  at::parallel_for(0, tiling.count(), tile_grain(K), [&](int64_t t0, int64_t t1) {
    acc_t acc[kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t start = tiling.begin(t), n = tiling.size(t);
      const acc_t* wr = w + tiling.row(t) * K;
      const scalar_t* x0 = x[0] + start;
      for (int64_t j = 0; j < n; ++j) acc[j] = wr[0] * static_cast<acc_t>(x0[j]);
      for (int64_t k = 1; k < K; ++k) {
        const acc_t wk = wr[k];
        const scalar_t* xk = x[k] + start;
        for (int64_t j = 0; j < n; ++j) acc[j] += wk * static_cast<acc_t>(xk[j]);
      }
      scalar_t* yt = y + start;
      for (int64_t j = 0; j < n; ++j) yt[j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

// One pass over g: optionally gx_k = w[row, k] * g (kGrads) and the products
// cost[row, k] = sum(g * x_k) (kCost), the latter written as float64 to
// `cost` ([rows, K]).
template <typename scalar_t, typename acc_t, bool kGrads, bool kCost>
void products_kernel(const scalar_t* g, const std::vector<const scalar_t*>& x,
                     const acc_t* w, const std::vector<scalar_t*>& gx, double* cost,
                     const Tiling& tiling) {
  const int64_t K = static_cast<int64_t>(kGrads ? gx.size() : x.size());
  std::vector<acc_t> partial(kCost ? tiling.count() * K : 0);
  at::parallel_for(0, tiling.count(), tile_grain(K), [&](int64_t t0, int64_t t1) {
    acc_t gt[kTile];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t start = tiling.begin(t), n = tiling.size(t);
      for (int64_t j = 0; j < n; ++j) gt[j] = static_cast<acc_t>(g[start + j]);
      for (int64_t k = 0; k < K; ++k) {
        if constexpr (kGrads) {
          const acc_t wk = w[tiling.row(t) * K + k];
          scalar_t* gk = gx[k] + start;
          for (int64_t j = 0; j < n; ++j) gk[j] = static_cast<scalar_t>(wk * gt[j]);
        }
        if constexpr (kCost) {
          partial[t * K + k] = dot_tile(gt, x[k] + start, n);
        }
      }
    }
  });
  if constexpr (kCost) {
    for (int64_t r = 0; r < tiling.rows; ++r) {
      for (int64_t k = 0; k < K; ++k) {
        double s = 0;
        for (int64_t i = 0; i < tiling.tiles_per_row; ++i) {
          s += partial[(r * tiling.tiles_per_row + i) * K + k];
        }
        cost[r * K + k] = s;
      }
    }
  }
}

// The ProductsKernel of pynas/common/weighted_ops.h on CPU (mixed_sum.cpp),
// shared by mixed_sum_backward and edge_cost.
at::Tensor products_cpu_kernel(const at::Tensor& grad, const std::vector<at::Tensor>& x,
                               const at::Tensor& w, const std::vector<at::Tensor>& gx,
                               int64_t rows, int64_t row_numel);

}  // namespace pynas::cpu
