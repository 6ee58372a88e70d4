// The `pynas` operator namespace and the Python module `pynas._C`.
// Importing pynas._C loads this library, whose static initialisers register
// every op schema (TORCH_LIBRARY_FRAGMENTs in csrc/<op>.cpp) and every kernel
// (TORCH_LIBRARY_IMPL in csrc/cpu and csrc/cuda).
#include <Python.h>
#include <torch/library.h>

// The namespace itself; each csrc/<op>.cpp adds its schemas as a fragment.
TORCH_LIBRARY(pynas, m) {}

namespace {

PyObject* cuda_kernels_built(PyObject*, PyObject*) {
#ifdef PYNAS_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cuda_kernels_built", cuda_kernels_built, METH_NOARGS,
     "Whether this build of pynas compiled its CUDA kernels."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "Compiled kernels of pynas (registered as torch.ops.pynas).",
                          -1, methods};

}  // namespace

extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }
