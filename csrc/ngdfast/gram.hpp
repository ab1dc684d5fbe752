// The Gram engine: G = X X^T as a blocked, threaded SYRK on the thread team
// (or on NumPy's borrowed BLAS). fisher() and the Woodbury solves build on it.
#pragma once

#include <functional>

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// G = X X^T for an n x k operand X, stored column-major (row_major == false,
// X(i, j) = data[i + j * ld]) or row-major, i.e. memory holding X^T column-major
// (row_major == true, X(i, j) = data[j + i * ld]), as Panel::row_major.
template <class T>
struct GramOperand {
    const T* data;
    index_t ld;
    bool row_major;
    index_t n, k;
    const T* at(index_t i, index_t j) const { return row_major ? data + i * ld + j : data + i + j * ld; }
};

// out = beta * out + alpha * X X^T for the n x n column-major `out` (leading
// dimension ldo). Every written element follows that formula exactly, so an
// out that is not symmetric still gets the elementwise EMA; beta == 0 means
// out is not read. With write_upper == false only the lower triangle (i >= j)
// is written. Blocks of the lower triangle run on the thread team, shaped for
// the BLAS in use (tiles.hpp: tall blocks or square tiles, by the contraction
// length); when the output is a single tile (n <= gram_split), or when
// k >= 4n and n <= split_max_n, the contraction dimension k is split instead
// (one n x n buffer per chunk), so that a wide operand is streamed once
// rather than once per tile row.
//
// `along`, when given, is called on the split path only: once with the number
// of contraction chunks before any runs (`chunk` < 0, k0 = chunks), then once
// per chunk right after its product, on the thread that computed it, with the
// chunk index and its column range [k0, k0 + bk) of X (bk may be 0). Work on
// the same columns of X done there finds them in cache. Returns whether the
// split path ran (and so whether `along` was called).
//
// `on_host`: the product runs as one SYRK on NumPy's BLAS (the caller decided
// with borrow_host_blas, see host_blas.hpp) and, with write_upper, the upper
// triangle is mirrored from the lower: the elementwise formula holds when
// beta == 0 or out is exactly symmetric, which the caller ensures.
using GramAlong = std::function<void(std::ptrdiff_t chunk, index_t k0, index_t bk)>;

template <class T>
bool gram(const GramOperand<T>& x, T alpha, T* out, index_t ldo, T beta, bool write_upper, index_t split_max_n = 0,
          const GramAlong* along = nullptr, bool on_host = false);

// Whether out(i, j) == out(j, i) bitwise for all i, j of the n x n
// column-major out (NaNs compare unequal, so a NaN anywhere off the diagonal
// answers false).
template <class T>
bool exactly_symmetric(const T* out, index_t n, index_t ldo);

}  // namespace ngdfast
