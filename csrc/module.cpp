// Python module megarec._cpp: hot paths of data preprocessing (packing, loss masks,
// itemic id interleaving, Megatron .idx building, token concatenation).
#include "common.h"

PYBIND11_MODULE(_cpp, m) {
    m.doc() = "megarec C++ data helpers: best-fit packing, assistant loss masks, itemic token ids, "
              "Megatron indexed-dataset index building, token concatenation.";
    megarec::register_packing(m);
    megarec::register_loss_mask(m);
    megarec::register_itemic_ids(m);
    megarec::register_index_builder(m);
    megarec::register_token_concat(m);
}
