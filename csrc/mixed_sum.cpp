// Schemas of the mixed-operation weighted sum and its fused backward.
//   mixed_sum:          y = sum_k weights[k] * outputs[k]      (DARTS Eq. 1)
//   mixed_sum_backward: grad_outputs[k] = weights[k] * grad,
//                       grad_weights[k] = sum(grad * outputs[k]), in one pass.
// weights is [K] (one architecture) or [B, K] (a row per sample).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pynas, m) {
  // Fake (meta) kernels and autograd live in Python; torch imports them on demand.
  m.set_python_module("pynas.functional");
  m.def("mixed_sum(Tensor[] outputs, Tensor weights) -> Tensor");
  m.def(
      "mixed_sum_backward(Tensor grad, Tensor[] outputs, Tensor weights, "
      "bool outputs_grad, bool weights_grad) -> (Tensor[], Tensor)");
}
