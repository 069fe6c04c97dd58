// Batch text -> token ids without the Hugging Face tokenizer for the parts it would handle trivially:
//  * added tokens (itemic tokens, <|im_start|>, ...) are found by leftmost-longest matching, exactly as the
//    `tokenizers` AddedVocabulary splits a text before normalisation, and become their ids directly;
//  * the text between them ("chunks"), when it is plain ASCII, is pre-tokenised with the Qwen2/Qwen3 split
//    regex (hand-written for ASCII) and byte-level BPE-encoded with the tokenizer's own merges (same merge
//    order and tie-breaking as `tokenizers`' BPE model), with a word cache;
//  * every other chunk is handed back to Python as a "hole" for the Rust tokenizer, and `fill` splices its
//    ids in. Output: documents = pieces + EOD, as one int32 array plus lengths.
// Which tokenizers qualify for the BPE part is decided on the Python side (megarec/data/hf_tokenizer.py).
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <pybind11/stl.h>

#include "common.h"

namespace megarec {
namespace {

constexpr size_t kWordCacheLimit = 1 << 18;  // distinct words cached per encoder (then the cache restarts)

// ---- leftmost-longest matcher over a fixed set of byte strings (a byte trie in one hash map) -------------
class TokenTrie {
  public:
    void add(const std::string& s, int32_t id) {
        if (s.empty()) throw py::value_error("empty added token");
        int64_t node = 0;
        for (unsigned char c : s) {
            const uint64_t key = (static_cast<uint64_t>(node) << 8) | c;
            auto it = edges_.find(key);
            if (it == edges_.end()) {
                const int64_t child = static_cast<int64_t>(ids_.size());
                ids_.push_back(-1);
                edges_.emplace(key, child);
                node = child;
            } else {
                node = it->second;
            }
        }
        ids_[node] = id;
        first_[static_cast<unsigned char>(s[0])] = true;
    }
    // Longest token starting at text[pos]: (length, id) or (0, -1).
    std::pair<size_t, int32_t> match(const char* text, size_t n, size_t pos) const {
        if (!first_[static_cast<unsigned char>(text[pos])]) return {0, -1};
        int64_t node = 0;
        std::pair<size_t, int32_t> best{0, -1};
        for (size_t i = pos; i < n; ++i) {
            auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<unsigned char>(text[i]));
            if (it == edges_.end()) break;
            node = it->second;
            if (ids_[node] >= 0) best = {i + 1 - pos, ids_[node]};
        }
        return best;
    }
    bool empty() const { return ids_.size() <= 1; }

  private:
    std::unordered_map<uint64_t, int64_t> edges_;
    std::vector<int32_t> ids_{-1};  // node 0 = root
    bool first_[256] = {};
};

// ---- byte-level BPE (semantics of tokenizers' BPE model: merge the pair of lowest rank, leftmost first) ----
class ByteBPE {
  public:
    ByteBPE(const std::vector<int32_t>& byte_ids, const std::vector<std::tuple<int32_t, int32_t, int32_t>>& merges,
            const std::unordered_map<std::string, int32_t>* whole_words)
        : byte_ids_(byte_ids) {
        if (byte_ids_.size() != 256) throw py::value_error("byte_ids must have 256 entries");
        for (size_t rank = 0; rank < merges.size(); ++rank) {
            const auto& [a, b, out] = merges[rank];
            merges_[key(a, b)] = {static_cast<int32_t>(rank), out};  // a later duplicate wins, as in tokenizers
        }
        if (whole_words) whole_words_ = *whole_words;
        ignore_merges_ = whole_words != nullptr;
    }

    void encode_word(const char* w, size_t n, std::vector<int32_t>& out) {
        std::string word(w, n);
        auto hit = cache_.find(word);
        if (hit != cache_.end()) {
            out.insert(out.end(), hit->second.begin(), hit->second.end());
            return;
        }
        std::vector<int32_t> ids;
        auto whole = ignore_merges_ ? whole_words_.find(word) : whole_words_.end();
        if (whole != whole_words_.end()) {
            ids.push_back(whole->second);
        } else {
            merge_all(w, n, ids);
        }
        out.insert(out.end(), ids.begin(), ids.end());
        if (cache_.size() >= kWordCacheLimit) cache_.clear();
        cache_.emplace(std::move(word), std::move(ids));
    }

  private:
    struct Symbol {
        int32_t id;
        int64_t prev, next;
        bool alive;
    };
    struct Merge {
        int32_t rank;
        int64_t pos;
        int32_t new_id;
        bool operator<(const Merge& o) const {  // priority_queue pops the largest: lowest rank, then lowest pos
            return rank != o.rank ? rank > o.rank : pos > o.pos;
        }
    };
    static uint64_t key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }

    void merge_all(const char* w, size_t n, std::vector<int32_t>& ids) {
        std::vector<Symbol> sym(n);
        for (size_t i = 0; i < n; ++i)
            sym[i] = {byte_ids_[static_cast<unsigned char>(w[i])], static_cast<int64_t>(i) - 1,
                      i + 1 < n ? static_cast<int64_t>(i + 1) : -1, true};
        std::priority_queue<Merge> queue;
        for (size_t i = 0; i + 1 < n; ++i) {
            auto it = merges_.find(key(sym[i].id, sym[i + 1].id));
            if (it != merges_.end()) queue.push({it->second.first, static_cast<int64_t>(i), it->second.second});
        }
        while (!queue.empty()) {
            const Merge top = queue.top();
            queue.pop();
            Symbol& left = sym[top.pos];
            if (!left.alive || left.next < 0) continue;
            const int64_t right_pos = left.next;
            auto it = merges_.find(key(left.id, sym[right_pos].id));
            if (it == merges_.end() || it->second.second != top.new_id) continue;
            left.id = top.new_id;
            left.next = sym[right_pos].next;
            sym[right_pos].alive = false;
            if (left.next >= 0) sym[left.next].prev = top.pos;
            if (left.prev >= 0) {
                auto p = merges_.find(key(sym[left.prev].id, left.id));
                if (p != merges_.end()) queue.push({p->second.first, left.prev, p->second.second});
            }
            if (left.next >= 0) {
                auto q = merges_.find(key(left.id, sym[left.next].id));
                if (q != merges_.end()) queue.push({q->second.first, top.pos, q->second.second});
            }
        }
        for (int64_t i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
    }

    std::vector<int32_t> byte_ids_;
    std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, merged id)
    std::unordered_map<std::string, int32_t> whole_words_;
    bool ignore_merges_ = false;
    std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// ---- the Qwen2/Qwen3 pre-tokenizer regex on ASCII text ------------------------------------------------
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Chunks reaching here contain only printable ASCII, \t, \n and \r (see ascii_chunk), so \p{L} = [A-Za-z],
// \p{N} = [0-9], \s = [ \t\n\r]; alternatives are tried in order (leftmost-first), quantifiers greedy.
inline bool is_letter(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
inline bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
inline bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline bool is_crlf(unsigned char c) { return c == '\r' || c == '\n'; }
inline bool is_other(unsigned char c) { return !is_letter(c) && !is_digit(c) && !is_space(c); }

size_t next_pretoken(const unsigned char* s, size_t n, size_t i) {
    const unsigned char c = s[i];
    if (c == '\'' && i + 1 < n) {
        const unsigned char c1 = s[i + 1] | 0x20;
        if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
        if (i + 2 < n) {
            const unsigned char c2 = s[i + 2] | 0x20;
            if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
        }
    }
    size_t j;
    if (is_letter(c) || (!is_crlf(c) && !is_digit(c) && i + 1 < n && is_letter(s[i + 1]))) {
        for (j = i + 1; j < n && is_letter(s[j]);) ++j;
        return j;
    }
    if (is_digit(c)) return i + 1;
    const size_t k = c == ' ' ? i + 1 : i;
    if (k < n && is_other(s[k])) {
        for (j = k + 1; j < n && is_other(s[j]);) ++j;
        while (j < n && is_crlf(s[j])) ++j;
        return j;
    }
    // c is whitespace
    size_t w = i;
    int64_t last_crlf = -1;
    while (w < n && is_space(s[w])) {
        if (is_crlf(s[w])) last_crlf = static_cast<int64_t>(w);
        ++w;
    }
    if (last_crlf >= 0) return static_cast<size_t>(last_crlf) + 1;
    if (w == n) return w;
    if (w - 1 > i) return w - 1;
    return w;
}

inline bool ascii_chunk(const unsigned char* s, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        const unsigned char c = s[i];
        if ((c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c > 0x7e) return false;
    }
    return true;
}

// ---- batch plan ---------------------------------------------------------------------------------------
struct BatchPlan {
    std::vector<int32_t> ids;                        // resolved tokens, holes left out
    struct Hole {
        size_t pos, index, doc;  // position in ids, index into the hole texts, document
    };
    std::vector<Hole> holes;                         // in order
    std::vector<size_t> doc_end;                     // end of each document in ids (EOD not included)
    size_t num_holes = 0;

    py::tuple fill(py::list hole_ids, int64_t eod) {
        if (static_cast<size_t>(hole_ids.size()) != num_holes)
            throw py::value_error("expected " + std::to_string(num_holes) + " hole encodings, got " +
                                  std::to_string(hole_ids.size()));
        size_t extra = 0;
        for (auto h : hole_ids) {
            if (!PyList_Check(h.ptr())) throw py::type_error("hole encodings must be lists of ints");
            extra += PyList_GET_SIZE(h.ptr());
        }
        const size_t ndocs = doc_end.size();
        py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size() + extra + (eod >= 0 ? ndocs : 0)));
        py::array_t<int32_t> lengths(static_cast<py::ssize_t>(ndocs));
        int32_t* o = out.mutable_data();
        int32_t* len = lengths.mutable_data();
        size_t k = 0, src = 0, h = 0;
        for (size_t d = 0; d < ndocs; ++d) {
            const size_t start = k;
            while (true) {
                const bool hole = h < holes.size() && holes[h].doc == d;
                const size_t stop = hole ? holes[h].pos : doc_end[d];
                std::memcpy(o + k, ids.data() + src, (stop - src) * sizeof(int32_t));
                k += stop - src;
                src = stop;
                if (!hole) break;
                PyObject* lst = PyList_GET_ITEM(hole_ids.ptr(), holes[h].index);
                const Py_ssize_t m = PyList_GET_SIZE(lst);
                for (Py_ssize_t t = 0; t < m; ++t) {
                    const long v = PyLong_AsLong(PyList_GET_ITEM(lst, t));
                    if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
                    if (v < 0 || v > INT32_MAX) throw py::value_error("token id out of int32 range");
                    o[k++] = static_cast<int32_t>(v);
                }
                ++h;
            }
            if (eod >= 0) o[k++] = static_cast<int32_t>(eod);
            len[d] = static_cast<int32_t>(k - start);
        }
        return py::make_tuple(out, lengths);
    }
};

class TextEncoder {
  public:
    TextEncoder(const std::vector<std::pair<py::bytes, int32_t>>& added, py::object bpe) {
        for (const auto& [tok, id] : added) trie_.add(std::string(tok), id);
        if (!bpe.is_none()) {
            auto spec0 = bpe.cast<py::dict>();
            if (spec0.contains("normalized_added"))
                for (const auto& [tok, id] : spec0["normalized_added"].cast<std::vector<std::pair<py::bytes, int32_t>>>())
                    normalized_trie_.add(std::string(tok), id);
            auto spec = bpe.cast<py::dict>();
            auto byte_ids = spec["byte_ids"].cast<std::vector<int32_t>>();
            auto merges = spec["merges"].cast<std::vector<std::tuple<int32_t, int32_t, int32_t>>>();
            std::unordered_map<std::string, int32_t> words;
            const bool ignore_merges = spec.contains("whole_words") && !spec["whole_words"].is_none();
            if (ignore_merges)
                for (auto item : spec["whole_words"].cast<py::dict>())
                    words.emplace(std::string(item.first.cast<py::bytes>()), item.second.cast<int32_t>());
            bpe_ = std::make_unique<ByteBPE>(byte_ids, merges, ignore_merges ? &words : nullptr);
        }
    }

    bool has_bpe() const { return static_cast<bool>(bpe_); }

    // pieces: str (to tokenise), list of ints or 1-D int array (ids as they are); counts[d] pieces per document.
    py::tuple plan(py::list pieces, py::array_t<int64_t, py::array::c_style | py::array::forcecast> counts_in) {
        auto counts = counts_in.unchecked<1>();
        int64_t expected = 0;
        for (py::ssize_t d = 0; d < counts.shape(0); ++d) {
            if (counts(d) < 0) throw py::value_error("piece counts must be non-negative");
            expected += counts(d);
        }
        if (expected != static_cast<int64_t>(pieces.size()))
            throw py::value_error("sum(piece_counts)=" + std::to_string(expected) + " but " +
                                  std::to_string(pieces.size()) + " pieces given");
        auto plan = std::make_unique<BatchPlan>();
        py::list hole_texts;
        size_t p = 0;
        for (py::ssize_t d = 0; d < counts.shape(0); ++d) {
            for (int64_t k = 0; k < counts(d); ++k, ++p) {
                PyObject* piece = PyList_GET_ITEM(pieces.ptr(), p);
                if (PyUnicode_Check(piece)) {
                    Py_ssize_t n;
                    const char* s = PyUnicode_AsUTF8AndSize(piece, &n);
                    if (!s) throw py::error_already_set();
                    scan(s, static_cast<size_t>(n), *plan, hole_texts);
                } else if (PyList_Check(piece)) {
                    const Py_ssize_t len = PyList_GET_SIZE(piece);
                    for (Py_ssize_t t = 0; t < len; ++t) {
                        const long v = PyLong_AsLong(PyList_GET_ITEM(piece, t));
                        if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
                        if (v < 0 || v > INT32_MAX) throw py::value_error("token id out of int32 range");
                        plan->ids.push_back(static_cast<int32_t>(v));
                    }
                } else {
                    auto arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(
                        py::reinterpret_borrow<py::object>(piece));
                    if (!arr || arr.ndim() != 1)
                        throw py::type_error("each piece must be a str, a list of ints or a 1-D int array");
                    auto a = arr.unchecked<1>();
                    for (py::ssize_t t = 0; t < a.shape(0); ++t) {
                        if (a(t) < 0 || a(t) > INT32_MAX) throw py::value_error("token id out of int32 range");
                        plan->ids.push_back(static_cast<int32_t>(a(t)));
                    }
                }
            }
            plan->doc_end.push_back(plan->ids.size());
        }
        plan->num_holes = static_cast<size_t>(hole_texts.size());
        return py::make_tuple(py::cast(std::move(plan)), hole_texts);
    }

    // One text, for tests: (ids with -1 where a hole is, hole texts).
    py::tuple encode_text(const std::string& text) {
        BatchPlan plan;
        py::list holes;
        scan(text.data(), text.size(), plan, holes);
        std::vector<int32_t> out;
        size_t src = 0;
        for (const auto& hole : plan.holes) {
            out.insert(out.end(), plan.ids.begin() + src, plan.ids.begin() + hole.pos);
            out.push_back(-1);
            src = hole.pos;
        }
        out.insert(out.end(), plan.ids.begin() + src, plan.ids.end());
        return py::make_tuple(out, holes);
    }

  private:
    void chunk(const char* s, size_t n, BatchPlan& plan, py::list& holes) {
        if (n == 0) return;
        const auto* u = reinterpret_cast<const unsigned char*>(s);
        if (bpe_ && ascii_chunk(u, n)) {
            // normalisation is the identity on ASCII, so "normalized" added tokens match the raw chunk
            size_t start = 0;
            if (!normalized_trie_.empty()) {
                for (size_t i = 0; i < n;) {
                    const auto [len, id] = normalized_trie_.match(s, n, i);
                    if (len == 0) {
                        ++i;
                        continue;
                    }
                    words(u + start, i - start, plan);
                    plan.ids.push_back(id);
                    i += len;
                    start = i;
                }
            }
            words(u + start, n - start, plan);
            return;
        }
        PyObject* str = PyUnicode_DecodeUTF8(s, static_cast<Py_ssize_t>(n), "strict");
        if (!str) throw py::error_already_set();
        plan.holes.push_back({plan.ids.size(), static_cast<size_t>(holes.size()), plan.doc_end.size()});
        holes.append(py::reinterpret_steal<py::object>(str));
    }

    void words(const unsigned char* u, size_t n, BatchPlan& plan) {
        for (size_t i = 0; i < n;) {
            const size_t j = next_pretoken(u, n, i);
            bpe_->encode_word(reinterpret_cast<const char*>(u) + i, j - i, plan.ids);
            i = j;
        }
    }

    void scan(const char* s, size_t n, BatchPlan& plan, py::list& holes) {
        size_t start = 0;
        if (!trie_.empty()) {
            for (size_t i = 0; i < n;) {
                const auto [len, id] = trie_.match(s, n, i);
                if (len == 0) {
                    ++i;
                    continue;
                }
                chunk(s + start, i - start, plan, holes);
                plan.ids.push_back(id);
                i += len;
                start = i;
            }
        }
        chunk(s + start, n - start, plan, holes);
    }

    TokenTrie trie_;             // added tokens matched on the raw text (normalized=False)
    TokenTrie normalized_trie_;  // ASCII added tokens matched after normalisation (normalized=True)
    std::unique_ptr<ByteBPE> bpe_;
};

}  // namespace

void register_text_encoder(py::module_& m) {
    py::class_<BatchPlan>(m, "BatchPlan", "Token ids of a batch with holes for texts the Rust tokenizer encodes.")
        .def("fill", &BatchPlan::fill, py::arg("hole_ids"), py::arg("eod"),
             "Splice the hole encodings (lists of ids, in hole order) in and append `eod` (if >= 0) to every\n"
             "document. Returns (ids int32, lengths int32).");
    py::class_<TextEncoder>(m, "TextEncoder",
                            "Added-token splitting (leftmost-longest, as tokenizers' AddedVocabulary) and, when\n"
                            "`bpe` is given, byte-level BPE of ASCII chunks with the Qwen2/3 pre-tokenizer.")
        .def(py::init<const std::vector<std::pair<py::bytes, int32_t>>&, py::object>(), py::arg("added"),
             py::arg("bpe") = py::none(),
             "added: [(UTF-8 token, id)] matched before anything else. bpe: None or a dict with 'byte_ids'\n"
             "(id of each single byte, 256 entries), 'merges' ([(left id, right id, merged id)] in rank order),\n"
             "optionally 'whole_words' ({bytes: id}, for ignore_merges tokenizers) and 'normalized_added'\n"
             "([(ASCII token, id)] of added tokens matched after normalisation, split off inside ASCII chunks).")
        .def_property_readonly("has_bpe", &TextEncoder::has_bpe)
        .def("plan", &TextEncoder::plan, py::arg("pieces"), py::arg("piece_counts"),
             "Encode documents made of pieces (str, or ids as list / 1-D array). Returns (plan, holes): the\n"
             "texts in `holes` must be encoded by the tokenizer and passed to plan.fill(hole_ids, eod).")
        .def("encode_text", &TextEncoder::encode_text, py::arg("text"),
             "One text: (ids with -1 at each hole, hole texts). For tests and inspection.");
}

}  // namespace megarec
