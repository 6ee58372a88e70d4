// Schema of the per-edge cost C_k = sum(grad * outputs[k]) (Eq. 4-5 of the
// wiring-evolution paper; the DARTS alpha-gradient before the softmax Jacobian),
// over every element or, with per_sample, over every element of each sample.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(pynas, m) {
  // Fake (meta) kernels and autograd live in Python; torch imports them on demand.
  m.set_python_module("pynas.functional");
  m.def("edge_cost(Tensor grad, Tensor[] outputs, bool per_sample) -> Tensor");
}
