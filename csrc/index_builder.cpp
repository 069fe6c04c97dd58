// Megatron-Core indexed dataset index (.idx) bytes: header, lengths, byte pointers, document indices.
#include <cstdint>
#include <cstring>
#include <string>

#include "common.h"

namespace megarec {
namespace {

int64_t dtype_size(int code) {
    switch (code) {
        case 1: case 2: return 1;   // uint8, int8
        case 3: case 8: return 2;   // int16, uint16
        case 4: case 7: return 4;   // int32, float32
        case 5: case 6: return 8;   // int64, float64
        default: throw py::value_error("unknown Megatron dtype code " + std::to_string(code));
    }
}

template <typename T>
void put(std::string& out, size_t& at, T value) {
    std::memcpy(&out[at], &value, sizeof(T));
    at += sizeof(T);
}

// Layout (little endian): "MMIDIDX\0\0", u64 version=1, u8 dtype code, u64 N, u64 D,
// int32[N] lengths, int64[N] byte pointers, int64[D] document indices (0 ... N).
py::bytes build_index(py::array_t<int32_t, py::array::c_style | py::array::forcecast> lengths_in,
                      py::array_t<int64_t, py::array::c_style | py::array::forcecast> docs_in, int dtype_code) {
    const int64_t item = dtype_size(dtype_code);
    auto lengths = lengths_in.unchecked<1>();
    auto docs = docs_in.unchecked<1>();
    const int64_t n = lengths.shape(0), d = docs.shape(0);
    if (d < 1 || docs(0) != 0 || docs(d - 1) != n)
        throw py::value_error("document indices must start at 0 and end at the number of sequences");
    for (int64_t i = 1; i < d; ++i)
        if (docs(i) < docs(i - 1)) throw py::value_error("document indices must be non-decreasing");
    for (int64_t i = 0; i < n; ++i)
        if (lengths(i) < 0) throw py::value_error("sequence " + std::to_string(i) + " has negative length");
    const size_t size = 9 + 8 + 1 + 8 + 8 + 4 * n + 8 * n + 8 * d;
    std::string out(size, '\0');
    size_t at = 0;
    std::memcpy(&out[0], "MMIDIDX\0\0", 9);
    at = 9;
    put<uint64_t>(out, at, 1);
    put<uint8_t>(out, at, static_cast<uint8_t>(dtype_code));
    put<uint64_t>(out, at, static_cast<uint64_t>(n));
    put<uint64_t>(out, at, static_cast<uint64_t>(d));
    for (int64_t i = 0; i < n; ++i) put<int32_t>(out, at, lengths(i));
    int64_t pointer = 0;
    for (int64_t i = 0; i < n; ++i) {
        put<int64_t>(out, at, pointer);
        pointer += static_cast<int64_t>(lengths(i)) * item;
    }
    for (int64_t i = 0; i < d; ++i) put<int64_t>(out, at, docs(i));
    return py::bytes(out);
}

}  // namespace

void register_index_builder(py::module_& m) {
    m.def("build_index", &build_index, py::arg("lengths"), py::arg("document_indices"), py::arg("dtype_code"),
          "Bytes of a Megatron-Core .idx file for sequences of `lengths` tokens (dtype given by Megatron's\n"
          "DType code: 1 uint8, 4 int32, 8 uint16, ...) and `document_indices` (sequence boundaries, 0 ... N).");
}

}  // namespace megarec
