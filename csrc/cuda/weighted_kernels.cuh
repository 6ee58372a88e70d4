// CUDA kernels over K same-shaped dense operands x_k and one weight row per
// block of `row_numel` consecutive elements (see pynas::WeightedProblem).
// Operand pointers travel in the kernel's parameter space, kMaxOperands per
// launch; larger K is processed in chunks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <vector>

namespace pynas::cuda {

constexpr int kMaxOperands = 64;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename T>
struct PtrPack {
  T* p[kMaxOperands];
};

// VEC elements loaded or stored as one 16-byte (or smaller) transaction.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

inline int multiprocessor_count() {
  int device = 0, count = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return count;
}

inline bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Whether every operand can be read as 16-byte vectors that never straddle a
// weight row.
inline bool can_vectorize(const std::vector<const void*>& ptrs, int64_t row_numel,
                          int vec) {
  if (row_numel % vec != 0) return false;
  for (const void* p : ptrs) {
    if (!aligned16(p)) return false;
  }
  return true;
}

template <typename acc_t>
__device__ inline acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// y (or the acc_t workspace ws, when more chunks follow) = [ws +] sum_k
// w[row, k] * x_k over one chunk of at most kMaxOperands operands.
template <typename scalar_t, typename acc_t, int VEC, bool kAccIn, bool kLast>
__global__ void __launch_bounds__(kThreads)
    mixed_sum_kernel(PtrPack<const scalar_t> x, int K, const acc_t* __restrict__ w,
                     int64_t w_ld, int64_t rows, int64_t row_numel, int64_t n_vec,
                     acc_t* __restrict__ ws, scalar_t* __restrict__ y) {
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < n_vec;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = v * VEC;
    const acc_t* wr = w + (rows == 1 ? 0 : i / row_numel) * w_ld;
    acc_t acc[VEC];
    if constexpr (kAccIn) {
      const auto in = *reinterpret_cast<const Vec<acc_t, VEC>*>(ws + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = in.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = 0;
    }
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const acc_t wk = __ldg(wr + k);
      const auto xv = *reinterpret_cast<const Vec<scalar_t, VEC>*>(x.p[k] + i);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += wk * static_cast<acc_t>(xv.v[j]);
    }
    if constexpr (kLast) {
      Vec<scalar_t, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<scalar_t>(acc[j]);
      *reinterpret_cast<Vec<scalar_t, VEC>*>(y + i) = out;
    } else {
      Vec<acc_t, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) out.v[j] = acc[j];
      *reinterpret_cast<Vec<acc_t, VEC>*>(ws + i) = out;
    }
  }
}

// One pass over grad for a chunk of operands: gx_k = w[row, k] * g (kGrads) and
// the block's share of sum(g * x_k) (kCost) written, as float64 like the CPU's
// tile partials, to partial[(row * gridDim.x + blockIdx.x) * partial_ld + k]. Blocks of one row
// (blockIdx.y) stride over its tiles of kThreads vectors; the caller adds the
// partials of a row in a fixed order, so the result is deterministic.
template <typename scalar_t, typename acc_t, int VEC, bool kGrads, bool kCost>
__global__ void __launch_bounds__(kThreads)
    products_kernel(const scalar_t* __restrict__ g, PtrPack<const scalar_t> x,
                    PtrPack<scalar_t> gx, int K, const acc_t* __restrict__ w,
                    int64_t w_ld, int64_t rows, int64_t row_numel,
                    double* __restrict__ partial, int64_t partial_ld) {
  __shared__ acc_t warp_part[kWarps][kMaxOperands];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t n_vec = row_numel / VEC;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t row_start = r * row_numel;
    if constexpr (kCost) {
      for (int k = lane; k < K; k += 32) warp_part[warp][k] = 0;
      __syncwarp();  // lane 0 accumulates into slots the other lanes zeroed
    }
    for (int64_t tile = blockIdx.x * static_cast<int64_t>(kThreads); tile < n_vec;
         tile += static_cast<int64_t>(gridDim.x) * kThreads) {
      const int64_t v = tile + threadIdx.x;
      const bool active = v < n_vec;
      const int64_t i = row_start + v * VEC;
      acc_t gv[VEC];
      if (active) {
        const auto in = *reinterpret_cast<const Vec<scalar_t, VEC>*>(g + i);
#pragma unroll
        for (int j = 0; j < VEC; ++j) gv[j] = static_cast<acc_t>(in.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) gv[j] = 0;
      }
      for (int k = 0; k < K; ++k) {
        if constexpr (kGrads) {
          if (active) {
            const acc_t wk = __ldg(w + r * w_ld + k);
            Vec<scalar_t, VEC> out;
#pragma unroll
            for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<scalar_t>(wk * gv[j]);
            *reinterpret_cast<Vec<scalar_t, VEC>*>(gx.p[k] + i) = out;
          }
        }
        if constexpr (kCost) {
          acc_t p = 0;
          if (active) {
            const auto xv = *reinterpret_cast<const Vec<scalar_t, VEC>*>(x.p[k] + i);
#pragma unroll
            for (int j = 0; j < VEC; ++j) p += gv[j] * static_cast<acc_t>(xv.v[j]);
          }
          p = warp_sum(p);
          if (lane == 0) warp_part[warp][k] += p;
        }
      }
    }
    if constexpr (kCost) {
      __syncthreads();
      for (int k = threadIdx.x; k < K; k += kThreads) {
        acc_t s = 0;
#pragma unroll
        for (int q = 0; q < kWarps; ++q) s += warp_part[q][k];
        partial[(r * gridDim.x + blockIdx.x) * partial_ld + k] = static_cast<double>(s);
      }
      __syncthreads();
    }
  }
}

}  // namespace pynas::cuda
