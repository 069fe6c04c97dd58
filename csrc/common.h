// Shared declarations for megarec's C++ data helpers (module megarec._cpp).
// Each helper source file registers its own functions on the module.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

namespace megarec {
namespace py = pybind11;

void register_packing(py::module_& m);
void register_loss_mask(py::module_& m);
void register_itemic_ids(py::module_& m);
void register_index_builder(py::module_& m);
void register_token_concat(py::module_& m);
void register_text_encoder(py::module_& m);

}  // namespace megarec
