// Schemas of the Gumbel-softmax (concrete) sample, SNAS Eq. 5:
//   soft = softmax((logits + G) / tau, dim),  G = -log(-log(U)),  U ~ U(0, 1),
// returned with the sample itself (soft, or its exact one-hot argmax when hard);
// the backward is the softmax Jacobian at `soft` (straight-through when hard).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pynas, m) {
  // Fake (meta) kernels and autograd live in Python; torch imports them on demand.
  m.set_python_module("pynas.functional");
  m.def(
      "gumbel_softmax(Tensor logits, float tau, bool hard, int dim, "
      "Generator? generator) -> (Tensor sample, Tensor soft)");
  m.def("gumbel_softmax_backward(Tensor grad, Tensor soft, float tau, int dim) -> Tensor");
}
