#include "ngdfast/finite.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ngdfast {

template <class T>
bool all_finite(const T* data, index_t size) {
    // A value is NaN or Inf exactly when its exponent bits are all ones. The
    // integer OR-reduction vectorises; a floating-point one may not without
    // -ffast-math, which would also break NaN tests.
    using U = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
    constexpr U exp_mask = sizeof(T) == 8 ? U(0x7FF0000000000000ULL) : U(0x7F800000U);
    constexpr index_t chunk = 2048;
    for (index_t s = 0; s < size; s += chunk) {
        const index_t e = std::min(size, s + chunk);
        U bad = 0;
        for (index_t i = s; i < e; ++i) {
            U bits;
            std::memcpy(&bits, data + i, sizeof(T));
            bad |= U((bits & exp_mask) == exp_mask);
        }
        if (bad) return false;
    }
    return true;
}

template <class T>
bool all_finite(const Strided<T>& a) {
    if (a.cs == 1 && a.rs == a.cols) return all_finite(a.data, a.rows * a.cols);
    if (a.rs == 1 && a.cs == a.rows) return all_finite(a.data, a.rows * a.cols);
    for (index_t i = 0; i < a.rows; ++i)
        for (index_t j = 0; j < a.cols; ++j)
            if (!std::isfinite(a(i, j))) return false;
    return true;
}

template <class T>
void require_finite_diagonal(const T* gram, index_t n, index_t ld) {
    if (!all_finite(diagonal(gram, n, ld))) throw NonFiniteScores();
}

#define NGDFAST_INSTANTIATE(T)                                      \
    template bool all_finite<T>(const T*, index_t);                 \
    template bool all_finite<T>(const Strided<T>&);                 \
    template void require_finite_diagonal<T>(const T*, index_t, index_t);
NGDFAST_INSTANTIATE(float)
NGDFAST_INSTANTIATE(double)
#undef NGDFAST_INSTANTIATE

}  // namespace ngdfast
