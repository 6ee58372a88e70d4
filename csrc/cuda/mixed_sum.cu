// CUDA kernels of mixed_sum and mixed_sum_backward (and the products pass that
// edge_cost shares).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/weighted_ops.h"
#include "products.h"
#include "weighted_kernels.cuh"

namespace pynas::cuda {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
PtrPack<T> pack(const std::vector<at::Tensor>& ts, int64_t begin, int64_t end) {
  PtrPack<T> p{};
  for (int64_t k = begin; k < end; ++k) {
    p.p[k - begin] = static_cast<T*>(const_cast<void*>(ts[k].const_data_ptr()));
  }
  return p;
}

template <typename scalar_t, typename acc_t, int VEC>
void launch_mixed_sum(const std::vector<at::Tensor>& x, const at::Tensor& w,
                      const at::Tensor& y, int64_t rows, int64_t row_numel) {
  const int64_t K = static_cast<int64_t>(x.size());
  const int64_t n_vec = y.numel() / VEC;
  const int blocks = static_cast<int>(
      std::min<int64_t>(ceil_div(n_vec, kThreads), multiprocessor_count() * 32LL));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const acc_t* wp = w.const_data_ptr<acc_t>();
  scalar_t* yp = y.mutable_data_ptr<scalar_t>();
  if (K <= kMaxOperands) {
    mixed_sum_kernel<scalar_t, acc_t, VEC, false, true><<<blocks, kThreads, 0, stream>>>(
        pack<const scalar_t>(x, 0, K), static_cast<int>(K), wp, K, rows, row_numel,
        n_vec, nullptr, yp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // More operands than one launch can carry: accumulate chunks in acc_t.
  at::Tensor ws = at::empty({y.numel()}, y.options().dtype(w.scalar_type()));
  acc_t* wsp = ws.mutable_data_ptr<acc_t>();
  for (int64_t k0 = 0; k0 < K; k0 += kMaxOperands) {
    const int64_t k1 = std::min(K, k0 + kMaxOperands);
    const auto xs = pack<const scalar_t>(x, k0, k1);
    const int kc = static_cast<int>(k1 - k0);
    if (k0 == 0) {
      mixed_sum_kernel<scalar_t, acc_t, VEC, false, false><<<blocks, kThreads, 0, stream>>>(
          xs, kc, wp + k0, K, rows, row_numel, n_vec, wsp, yp);
    } else if (k1 < K) {
      mixed_sum_kernel<scalar_t, acc_t, VEC, true, false><<<blocks, kThreads, 0, stream>>>(
          xs, kc, wp + k0, K, rows, row_numel, n_vec, wsp, yp);
    } else {
      mixed_sum_kernel<scalar_t, acc_t, VEC, true, true><<<blocks, kThreads, 0, stream>>>(
          xs, kc, wp + k0, K, rows, row_numel, n_vec, wsp, yp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

void mixed_sum_cuda_kernel(const std::vector<at::Tensor>& x, const at::Tensor& w,
                           const at::Tensor& y, int64_t rows, int64_t row_numel) {
  const c10::cuda::CUDAGuard guard(y.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, y.scalar_type(), "mixed_sum_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int kVec = 16 / sizeof(scalar_t);
        std::vector<const void*> ptrs{y.const_data_ptr()};
        for (const auto& t : x) ptrs.push_back(t.const_data_ptr());
        if (can_vectorize(ptrs, rows == 1 ? y.numel() : row_numel, kVec)) {
          launch_mixed_sum<scalar_t, acc_t, kVec>(x, w, y, rows, row_numel);
        } else {
          launch_mixed_sum<scalar_t, acc_t, 1>(x, w, y, rows, row_numel);
        }
      });
}

template <typename scalar_t, typename acc_t, int VEC, bool kGrads, bool kCost>
void launch_products(const at::Tensor& g, const std::vector<at::Tensor>& x,
                     const at::Tensor& w, const std::vector<at::Tensor>& gx,
                     int64_t rows, int64_t row_numel, const at::Tensor& partial,
                     int64_t blocks_per_row) {
  const int64_t K = static_cast<int64_t>(kCost ? x.size() : gx.size());
  const dim3 grid(static_cast<unsigned>(blocks_per_row),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const acc_t* wp = kGrads ? w.const_data_ptr<acc_t>() : nullptr;
  double* pp = kCost ? partial.mutable_data_ptr<double>() : nullptr;
  for (int64_t k0 = 0; k0 < K; k0 += kMaxOperands) {
    const int64_t k1 = std::min(K, k0 + kMaxOperands);
    products_kernel<scalar_t, acc_t, VEC, kGrads, kCost><<<grid, kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(),
        kCost ? pack<const scalar_t>(x, k0, k1) : PtrPack<const scalar_t>{},
        kGrads ? pack<scalar_t>(gx, k0, k1) : PtrPack<scalar_t>{},
        static_cast<int>(k1 - k0), kGrads ? wp + k0 : nullptr, K, rows, row_numel,
        kCost ? pp + k0 : nullptr, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename scalar_t, typename acc_t, int VEC>
void dispatch_products(const at::Tensor& g, const std::vector<at::Tensor>& x,
                       const at::Tensor& w, const std::vector<at::Tensor>& gx,
                       int64_t rows, int64_t row_numel, const at::Tensor& partial,
                       int64_t blocks_per_row) {
  const bool grads = !gx.empty(), cost = !x.empty();
  if (grads && cost) {
    launch_products<scalar_t, acc_t, VEC, true, true>(g, x, w, gx, rows, row_numel, partial,
                                                       blocks_per_row);
  } else if (grads) {
    launch_products<scalar_t, acc_t, VEC, true, false>(g, x, w, gx, rows, row_numel,
                                                        partial, blocks_per_row);
  } else {
    launch_products<scalar_t, acc_t, VEC, false, true>(g, x, w, gx, rows, row_numel,
                                                        partial, blocks_per_row);
  }
}

}  // namespace

at::Tensor products_cuda_kernel(const at::Tensor& grad, const std::vector<at::Tensor>& x,
                                const at::Tensor& w, const std::vector<at::Tensor>& gx,
                                int64_t rows, int64_t row_numel) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const bool cost = !x.empty();
  const int64_t K = static_cast<int64_t>(cost ? x.size() : gx.size());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "products_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        constexpr int kVec = 16 / sizeof(scalar_t);
        std::vector<const void*> ptrs{grad.const_data_ptr()};
        for (const auto& t : x) ptrs.push_back(t.const_data_ptr());
        for (const auto& t : gx) ptrs.push_back(t.const_data_ptr());
        const int vec = can_vectorize(ptrs, row_numel, kVec) ? kVec : 1;
        // Enough blocks to fill the GPU, but none without a tile of its row.
        const int64_t target = multiprocessor_count() * 16LL;
        const int64_t blocks_per_row = std::max<int64_t>(
            1, std::min(ceil_div(target, rows), ceil_div(row_numel / vec, kThreads)));
        at::Tensor partial =
            cost ? at::zeros({rows, blocks_per_row, K}, grad.options().dtype(at::kDouble))
                 : at::Tensor();
        if (vec == kVec) {
          dispatch_products<scalar_t, acc_t, kVec>(grad, x, w, gx, rows, row_numel, partial,
                                                   blocks_per_row);
        } else {
          dispatch_products<scalar_t, acc_t, 1>(grad, x, w, gx, rows, row_numel, partial,
                                                blocks_per_row);
        }
        // Fixed-order sum over each row's blocks keeps the result deterministic
        // on a given GPU (the number of blocks follows its multiprocessor count).
        if (cost) out = partial.sum(1);
      });
  return out;
}

namespace {

at::Tensor mixed_sum_cuda(at::TensorList outputs, const at::Tensor& weights) {
  return mixed_sum_impl(outputs, weights, &mixed_sum_cuda_kernel);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mixed_sum_backward_cuda(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad, bool weights_grad) {
  return mixed_sum_backward_impl(grad, outputs, weights, outputs_grad, weights_grad,
                                 &products_cuda_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CUDA, m) {
  m.impl("mixed_sum", &mixed_sum_cuda);
  m.impl("mixed_sum_backward", &mixed_sum_backward_cuda);
}

}  // namespace pynas::cuda
