// CUDA kernels of gumbel_softmax and its backward: one thread per softmax row
// (NAS rows are a handful of operations long), each row computed by the same
// code as on CPU (csrc/common/gumbel.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>
#include <tuple>

#include "../common/gumbel.h"

namespace pynas::cuda {

namespace {

constexpr int kRowThreads = 128;

template <typename scalar_t, typename acc_t>
__global__ void gumbel_softmax_kernel(const scalar_t* __restrict__ logits,
                                      scalar_t* __restrict__ soft,
                                      scalar_t* __restrict__ sample, RowGeometry geo,
                                      double tau, bool hard, at::PhiloxCudaState philox) {
  const auto seeds = at::cuda::philox::unpack(philox);
  const uint64_t seed = std::get<0>(seeds);
  const uint64_t offset = std::get<1>(seeds) / 4;  // 32-bit draws -> Philox blocks
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       r < geo.rows; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    gumbel_softmax_row<scalar_t, acc_t>(logits, soft, sample, geo, r, tau, hard, seed, offset,
                                        /*scratch=*/nullptr);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void gumbel_softmax_backward_kernel(const scalar_t* __restrict__ grad,
                                               const scalar_t* __restrict__ soft,
                                               scalar_t* __restrict__ out, RowGeometry geo,
                                               double tau) {
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       r < geo.rows; r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    gumbel_softmax_backward_row<scalar_t, acc_t>(grad, soft, out, geo, r, tau);
  }
}

unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>((rows + kRowThreads - 1) / kRowThreads, 65535)));
}

std::tuple<at::Tensor, at::Tensor> gumbel_softmax_cuda(
    const at::Tensor& logits, double tau, bool hard, int64_t dim,
    const std::optional<at::Generator>& generator) {
  const RowGeometry geo = gumbel_geometry(logits, tau, dim);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor l = logits.contiguous();
  at::Tensor soft = at::empty_like(l, at::MemoryFormat::Contiguous);
  at::Tensor sample = at::empty_like(l, at::MemoryFormat::Contiguous);
  at::PhiloxCudaState philox;
  {
    auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
        generator, at::cuda::detail::getDefaultCUDAGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    philox = gen->philox_cuda_state(4);  // one Philox block per element
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(),
                                  "gumbel_softmax_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gumbel_softmax_kernel<scalar_t, acc_t>
        <<<row_blocks(geo.rows), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            l.const_data_ptr<scalar_t>(), soft.mutable_data_ptr<scalar_t>(),
            sample.mutable_data_ptr<scalar_t>(), geo, tau, hard, philox);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {sample, soft};
}

at::Tensor gumbel_softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& soft,
                                        double tau, int64_t dim) {
  const RowGeometry geo = gumbel_backward_geometry(grad, soft, tau, dim);
  const c10::cuda::CUDAGuard guard(soft.device());
  const at::Tensor g = grad.contiguous(), s = soft.contiguous();
  at::Tensor out = at::empty_like(s, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(),
                                  "gumbel_softmax_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    gumbel_softmax_backward_kernel<scalar_t, acc_t>
        <<<row_blocks(geo.rows), kRowThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
            out.mutable_data_ptr<scalar_t>(), geo, tau);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pynas, CUDA, m) {
  m.impl("gumbel_softmax", &gumbel_softmax_cuda);
  m.impl("gumbel_softmax_backward", &gumbel_softmax_backward_cuda);
}

}  // namespace pynas::cuda
