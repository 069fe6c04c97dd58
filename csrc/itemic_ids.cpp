// Item codes -> token ids: <|sid_begin|> <layer-0 code> ... <layer-(L-1) code> <|sid_end|> per item.
#include <cstdint>
#include <string>

#include "common.h"

namespace megarec {
namespace {

// Layer l code c maps to first_id + l * codebook_size + c (all layer-a tokens, then all layer-b, ...).
py::array_t<int32_t> item_token_ids(py::array_t<int64_t, py::array::c_style | py::array::forcecast> codes_in,
                                    int64_t first_id, int64_t codebook_size, int64_t sid_begin_id,
                                    int64_t sid_end_id) {
    if (codes_in.ndim() != 2) throw py::value_error("codes must be a 2-D array [items, layers]");
    if (codebook_size <= 0) throw py::value_error("codebook_size must be positive");
    auto codes = codes_in.unchecked<2>();
    const int64_t n = codes.shape(0), layers = codes.shape(1);
    const int64_t top = first_id + layers * codebook_size - 1;
    if (first_id < 0 || top > INT32_MAX || sid_begin_id < 0 || sid_begin_id > INT32_MAX || sid_end_id < 0 ||
        sid_end_id > INT32_MAX)
        throw py::value_error("token ids out of int32 range");
    for (int64_t i = 0; i < n; ++i)
        for (int64_t l = 0; l < layers; ++l)
            if (codes(i, l) < 0 || codes(i, l) >= codebook_size)
                throw py::value_error("item " + std::to_string(i) + " layer " + std::to_string(l) + ": code " +
                                      std::to_string(codes(i, l)) + " outside [0, " +
                                      std::to_string(codebook_size) + ")");
    py::array_t<int32_t> out(n * (layers + 2));
    auto o = out.mutable_unchecked<1>();
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        o(k++) = static_cast<int32_t>(sid_begin_id);
        for (int64_t l = 0; l < layers; ++l) o(k++) = static_cast<int32_t>(first_id + l * codebook_size + codes(i, l));
        o(k++) = static_cast<int32_t>(sid_end_id);
    }
    return out;
}

}  // namespace

void register_itemic_ids(py::module_& m) {
    m.def("item_token_ids", &item_token_ids, py::arg("codes"), py::arg("first_id"), py::arg("codebook_size"),
          py::arg("sid_begin_id"), py::arg("sid_end_id"),
          "Token ids (int32) of items given codes [N, L]: per item sid_begin, first_id + l*codebook_size + c_l\n"
          "for each layer l, sid_end. Raises ValueError for codes outside [0, codebook_size).");
}

}  // namespace megarec
