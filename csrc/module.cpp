// Python module megarec._cpp: hot paths of data preprocessing (packing, loss masks,
// itemic id interleaving, Megatron .idx building, token concatenation, batch text encoding).
#include "common.h"

PYBIND11_MODULE(_cpp, m) {
    m.doc() = "megarec C++ data helpers: best-fit packing, assistant loss masks, itemic token ids, "
              "Megatron indexed-dataset index building, token concatenation, batch text encoding.";
    megarec::register_packing(m);
    megarec::register_loss_mask(m);
    megarec::register_itemic_ids(m);
    megarec::register_index_builder(m);
    megarec::register_token_concat(m);
    megarec::register_text_encoder(m);
}
