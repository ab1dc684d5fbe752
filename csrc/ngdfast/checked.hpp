// Checked sizes. Dimensions arrive from NumPy arrays, each of which fits in
// memory, but products of dimensions of different arrays (N x N from J's N
// rows, P x P from its P columns) may not: an index_t product that wraps
// would allocate a small buffer and write far past it. Every workspace size
// is computed here: overflow throws SizeError, a std::bad_alloc, which the
// bindings (pybind11) turn into MemoryError like any failed allocation.
#pragma once

#include <climits>
#include <cstddef>
#include <initializer_list>
#include <new>
#include <string>

#include "ngdfast/blas.hpp"

namespace ngdfast {

class SizeError : public std::bad_alloc {
public:
    explicit SizeError(std::string what) : what_(std::move(what)) {}
    const char* what() const noexcept override { return what_.c_str(); }

private:
    std::string what_;
};

// a * b for non-negative a, b; throws SizeError when the product of elements
// of `elem` bytes each would not be addressable (more than PTRDIFF_MAX bytes).
inline index_t checked_mul(index_t a, index_t b, std::size_t elem = 1) {
    const index_t max_elems = PTRDIFF_MAX / static_cast<index_t>(elem == 0 ? 1 : elem);
    if (a < 0 || b < 0 || (a != 0 && b > max_elems / a))
        throw SizeError("ngdfast: a workspace of " + std::to_string(a) + " x " + std::to_string(b) +
                        " elements of " + std::to_string(elem) + " bytes exceeds the address space");
    return a * b;
}

inline index_t checked_mul(index_t a, index_t b, index_t c, std::size_t elem) {
    return checked_mul(checked_mul(a, b, elem), c, elem);
}

// Whether every value fits the 32-bit integers of an LP64 BLAS (scipy-openblas32).
inline bool fits_int32(std::initializer_list<index_t> values) {
    for (index_t v : values)
        if (v < 0 || v > index_t(INT_MAX)) return false;
    return true;
}

}  // namespace ngdfast
