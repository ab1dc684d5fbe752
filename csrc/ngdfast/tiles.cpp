#include "ngdfast/tiles.hpp"

#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace ngdfast {
namespace {

std::mutex g_mutex;  // trivially destructible: a call on a daemon thread may read at exit
Tiles g_double, g_float;

template <class T>
Tiles& slot() {
    if constexpr (std::is_same_v<T, double>)
        return g_double;
    else
        return g_float;
}

void check(index_t value, const char* name) {
    if (value < 8) throw std::invalid_argument(std::string("set_tiles: ") + name + " must be >= 8, got " + std::to_string(value));
}

}  // namespace

template <class T>
Tiles tiles() {
    std::lock_guard<std::mutex> lock(g_mutex);
    return slot<T>();
}

template <class T>
void set_tiles(const Tiles& t) {
    check(t.gram_split, "gram_split");
    check(t.gram_panel, "gram_panel");
    check(t.gram_rows, "gram_rows");
    check(t.gram_square, "gram_square");
    check(t.gram_depth, "gram_depth");
    check(t.chol_panel, "chol_panel");
    check(t.chol_rows, "chol_rows");
    if (t.gram_rows < t.gram_panel)
        throw std::invalid_argument("set_tiles: gram_rows (" + std::to_string(t.gram_rows) +
                                    ") must be >= gram_panel (" + std::to_string(t.gram_panel) + ")");
    std::lock_guard<std::mutex> lock(g_mutex);
    slot<T>() = t;
}

bool gram_deep(index_t k, index_t depth) {
    const index_t pass = k <= depth ? k : (k < 2 * depth ? (k + 1) / 2 : depth);
    return 4 * pass >= 3 * depth;
}

template Tiles tiles<float>();
template Tiles tiles<double>();
template void set_tiles<float>(const Tiles&);
template void set_tiles<double>(const Tiles&);

}  // namespace ngdfast
