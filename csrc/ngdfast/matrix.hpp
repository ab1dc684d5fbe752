// Views of caller memory. NumPy arrays arrive with arbitrary element strides;
// the kernels work on column-major panels (BLAS convention), so a strided
// matrix is classified as either A^T or A in column-major form without a copy
// when one stride is 1, and copied once otherwise.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <vector>

#include "ngdfast/blas.hpp"
#include "ngdfast/checked.hpp"

namespace ngdfast {

// rows x cols matrix, element (i, j) at data[i * rs + j * cs]. Strides may be
// negative or zero for length-1 dimensions.
template <class T>
struct Strided {
    const T* data;
    index_t rows, cols, rs, cs;
    const T& operator()(index_t i, index_t j) const { return data[i * rs + j * cs]; }
};

// The diagonal of the n x n column-major matrix at `a` (leading dimension
// lda), as an n x 1 view.
template <class T>
Strided<T> diagonal(const T* a, index_t n, index_t lda) {
    return {a, n, 1, lda + 1, 1};
}

// A matrix A in BLAS form: either A column-major (row_major == false,
// element (i, j) at data[i + j * ld]) or A row-major, that is A^T column-major
// (row_major == true, element (i, j) at data[j + i * ld]). `store` owns the
// memory when a copy was needed.
template <class T>
struct Panel {
    const T* data = nullptr;
    index_t ld = 1;
    bool row_major = false;  // memory holds A^T column-major (A row-major, as a C-ordered array)
    std::vector<T> store;
};

// Panel of `a`, row- or column-major as its strides give, copying only when
// neither stride is 1. `row_scale`, when given, multiplies row i by
// row_scale[i] and always copies.
template <class T>
Panel<T> make_panel(const Strided<T>& a, const T* row_scale = nullptr);

// Owned column-major matrix with ld = rows. Left uninitialised: zeroing a
// P x P workspace would cost as much memory traffic as copying into it.
template <class T>
struct Matrix {
    index_t rows = 0, cols = 0;
    std::unique_ptr<T[]> store;
    Matrix() = default;
    Matrix(index_t r, index_t c)
        : rows(r), cols(c), store(new T[static_cast<std::size_t>(std::max<index_t>(checked_mul(r, c, sizeof(T)), 1))]) {}
    T* data() { return store.get(); }
    const T* data() const { return store.get(); }
    T& operator()(index_t i, index_t j) { return store[static_cast<std::size_t>(i + j * rows)]; }
};

// dst (rows x cols, column-major, leading dimension ldd) = src, any strides;
// blocked so that a transposing copy still streams through cache.
template <class T>
void copy_to(const Strided<T>& src, T* dst, index_t ldd);

// dst(i, j) = src(i, j) for i >= j only (plus `shift` on the diagonal): the
// lower triangle of a square matrix, the only part a lower Cholesky reads.
template <class T>
void copy_lower_shifted(const Strided<T>& src, T shift, T* dst, index_t ldd, bool parallel);

}  // namespace ngdfast
