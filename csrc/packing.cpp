// Best-fit-decreasing bin packing of samples (token lengths) into packs of bounded size.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <set>
#include <utility>
#include <vector>

#include "common.h"

namespace megarec {
namespace {

// Returns (order, offsets): pack p holds samples order[offsets[p]:offsets[p+1]], ascending by
// sample index; packs are numbered in the order they were opened. Deterministic.
py::tuple best_fit_pack(py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths_in,
                        int64_t capacity) {
    if (capacity <= 0) throw py::value_error("capacity must be positive");
    auto lengths = lengths_in.unchecked<1>();
    const int64_t n = lengths.shape(0);
    for (int64_t i = 0; i < n; ++i) {
        if (lengths(i) <= 0) throw py::value_error("sample " + std::to_string(i) + " has non-positive length");
        if (lengths(i) > capacity)
            throw py::value_error("sample " + std::to_string(i) + " has length " + std::to_string(lengths(i)) +
                                  " > capacity " + std::to_string(capacity));
    }
    std::vector<std::vector<int64_t>> bins;
    {
        py::gil_scoped_release release;
        std::vector<int64_t> by_size(n);
        std::iota(by_size.begin(), by_size.end(), 0);
        std::stable_sort(by_size.begin(), by_size.end(),
                         [&](int64_t a, int64_t b) { return lengths(a) > lengths(b); });
        // (remaining capacity, bin id); best fit = smallest remaining that still fits.
        std::set<std::pair<int64_t, int64_t>> open;
        for (int64_t s : by_size) {
            const int64_t len = lengths(s);
            auto it = open.lower_bound({len, -1});
            int64_t bin;
            int64_t remaining;
            if (it == open.end()) {
                bin = static_cast<int64_t>(bins.size());
                bins.emplace_back();
                remaining = capacity - len;
            } else {
                bin = it->second;
                remaining = it->first - len;
                open.erase(it);
            }
            bins[bin].push_back(s);
            if (remaining > 0) open.insert({remaining, bin});
        }
        for (auto& b : bins) std::sort(b.begin(), b.end());
    }
    py::array_t<int64_t> order(n);
    py::array_t<int64_t> offsets(static_cast<py::ssize_t>(bins.size() + 1));
    auto o = order.mutable_unchecked<1>();
    auto off = offsets.mutable_unchecked<1>();
    int64_t k = 0;
    off(0) = 0;
    for (size_t b = 0; b < bins.size(); ++b) {
        for (int64_t s : bins[b]) o(k++) = s;
        off(b + 1) = k;
    }
    return py::make_tuple(order, offsets);
}

}  // namespace

void register_packing(py::module_& m) {
    m.def("best_fit_pack", &best_fit_pack, py::arg("lengths"), py::arg("capacity"),
          "Best-fit-decreasing packing of sample lengths into packs of at most `capacity` tokens.\n"
          "Returns (order, offsets): pack p is order[offsets[p]:offsets[p+1]] (sample indices, ascending).\n"
          "Raises ValueError if a sample is longer than capacity or has length <= 0.");
}

}  // namespace megarec
