// Concatenate tokenizer output (Python lists of ints) into one int32 array per batch, document by
// document, appending an end-of-document id.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

namespace megarec {
namespace {

// pieces: flat list of int sequences; piece_counts[d] pieces belong to document d (in order).
// Returns (ids int32, lengths int32[D]); eod < 0 means no end-of-document token.
py::tuple concat_documents(py::list pieces, py::array_t<int64_t, py::array::c_style | py::array::forcecast> counts_in,
                           int64_t eod) {
    auto counts = counts_in.unchecked<1>();
    const int64_t ndocs = counts.shape(0);
    int64_t expected = 0;
    for (int64_t d = 0; d < ndocs; ++d) {
        if (counts(d) < 0) throw py::value_error("piece counts must be non-negative");
        expected += counts(d);
    }
    if (expected != static_cast<int64_t>(pieces.size()))
        throw py::value_error("sum(piece_counts)=" + std::to_string(expected) + " but " +
                              std::to_string(pieces.size()) + " pieces given");
    std::vector<int32_t> ids;
    py::array_t<int32_t> lengths_out(ndocs);
    auto lengths = lengths_out.mutable_unchecked<1>();
    size_t p = 0;
    for (int64_t d = 0; d < ndocs; ++d) {
        const size_t start = ids.size();
        for (int64_t k = 0; k < counts(d); ++k, ++p) {
            PyObject* piece = pieces[p].ptr();
            if (PyList_Check(piece)) {
                const Py_ssize_t len = PyList_GET_SIZE(piece);
                for (Py_ssize_t t = 0; t < len; ++t) {
                    const long v = PyLong_AsLong(PyList_GET_ITEM(piece, t));
                    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
                    if (v < 0 || v > INT32_MAX) throw py::value_error("token id out of int32 range");
                    ids.push_back(static_cast<int32_t>(v));
                }
            } else {
                auto arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(pieces[p]);
                if (!arr || arr.ndim() != 1) throw py::type_error("each piece must be a list or 1-D array of ints");
                auto a = arr.unchecked<1>();
                for (py::ssize_t t = 0; t < a.shape(0); ++t) {
                    if (a(t) < 0 || a(t) > INT32_MAX) throw py::value_error("token id out of int32 range");
                    ids.push_back(static_cast<int32_t>(a(t)));
                }
            }
        }
        if (eod >= 0) ids.push_back(static_cast<int32_t>(eod));
        lengths(d) = static_cast<int32_t>(ids.size() - start);
    }
    py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
    if (!ids.empty()) std::memcpy(out.mutable_data(), ids.data(), ids.size() * sizeof(int32_t));
    return py::make_tuple(out, lengths_out);
}

}  // namespace

void register_token_concat(py::module_& m) {
    m.def("concat_documents", &concat_documents, py::arg("pieces"), py::arg("piece_counts"), py::arg("eod"),
          "Concatenate token-id pieces (lists or 1-D arrays) into documents: document d is the next\n"
          "piece_counts[d] pieces followed by `eod` (skipped when eod < 0). Returns (ids int32, lengths int32).");
}

}  // namespace megarec
