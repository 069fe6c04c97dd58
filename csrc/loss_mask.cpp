// Chat loss masks: mark assistant tokens found by token-id patterns
// (header pattern, e.g. ids of "<|im_start|>assistant\n", up to and including an end id).
#include <cstdint>
#include <vector>

#include <pybind11/stl.h>

#include "common.h"

namespace megarec {
namespace {

// For each document [offsets[d], offsets[d+1]) of `ids`: every occurrence of `header` opens a span that
// covers the tokens after the header up to and including the next `end_id` (or the document end, which
// counts as unterminated). Header tokens themselves are never marked.
py::tuple assistant_loss_mask(py::array_t<int32_t, py::array::c_style | py::array::forcecast> ids_in,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> offsets_in,
                              const std::vector<int32_t>& header, int32_t end_id) {
    if (header.empty()) throw py::value_error("header pattern must not be empty");
    auto ids = ids_in.unchecked<1>();
    auto offsets = offsets_in.unchecked<1>();
    const int64_t total = ids.shape(0);
    const int64_t ndocs = offsets.shape(0) - 1;
    if (ndocs < 0) throw py::value_error("offsets must have at least one entry");
    if (offsets(0) != 0 || offsets(ndocs) != total)
        throw py::value_error("offsets must start at 0 and end at len(ids)");
    for (int64_t d = 0; d < ndocs; ++d)
        if (offsets(d + 1) < offsets(d)) throw py::value_error("offsets must be non-decreasing");

    py::array_t<uint8_t> mask_out(total);
    py::array_t<int64_t> spans_out(ndocs);
    py::array_t<int64_t> open_out(ndocs);
    auto mask = mask_out.mutable_unchecked<1>();
    auto spans = spans_out.mutable_unchecked<1>();
    auto unterminated = open_out.mutable_unchecked<1>();
    const int64_t h = static_cast<int64_t>(header.size());
    {
        py::gil_scoped_release release;
        for (int64_t i = 0; i < total; ++i) mask(i) = 0;
        for (int64_t d = 0; d < ndocs; ++d) {
            const int64_t end = offsets(d + 1);
            int64_t count = 0, open = 0;
            int64_t i = offsets(d);
            while (i < end) {
                bool match = i + h <= end;
                for (int64_t k = 0; match && k < h; ++k) match = ids(i + k) == header[k];
                if (!match) {
                    ++i;
                    continue;
                }
                ++count;
                int64_t j = i + h;
                bool closed = false;
                while (j < end) {
                    mask(j) = 1;
                    if (ids(j++) == end_id) {
                        closed = true;
                        break;
                    }
                }
                if (!closed) ++open;
                i = j;
            }
            spans(d) = count;
            unterminated(d) = open;
        }
    }
    return py::make_tuple(mask_out, spans_out, open_out);
}

}  // namespace

void register_loss_mask(py::module_& m) {
    m.def("assistant_loss_mask", &assistant_loss_mask, py::arg("ids"), py::arg("offsets"), py::arg("header"),
          py::arg("end_id"),
          "Loss mask (uint8) over a batch of documents: 1 on tokens after each `header` pattern up to and\n"
          "including the next `end_id`. Returns (mask, spans_per_doc, unterminated_spans_per_doc).");
}

}  // namespace megarec
