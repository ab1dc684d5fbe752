// Damped Cholesky: blocked right-looking factorisation on the thread team,
// built from GEMM-sized tiles so it runs near the machine's GEMM rate.
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// In-place lower Cholesky A = L L^T of the n x n column-major A (leading
// dimension lda; only the lower triangle is read, the strict upper triangle
// may be overwritten with scratch). Returns 0 or the 1-based index of the
// leading minor that is not positive definite.
template <class T>
index_t cholesky(T* a, index_t n, index_t lda);

// B = (L L^T)^-1 B in place for B n x m (column-major, leading dimension ldb).
template <class T>
void cholesky_solve(const T* l, index_t n, index_t ldl, T* b, index_t m, index_t ldb);

// X = (L L^T)^-1 G for G n x m (any strides) into x (column-major, leading
// dimension n).
template <class T>
void cholesky_solve(const T* l, index_t n, index_t ldl, const Strided<T>& G, T* x);

// The lower Cholesky factor L of F + damping I (F's lower triangle read) into
// l (n x n column-major, leading dimension n), strict upper triangle zero.
// Returns 0 or the 1-based failing pivot (l then holds a partial factor).
template <class T>
index_t cholesky_factor(const Strided<T>& F, T damping, T* l);

// X = (F + damping I)^-1 G reading only F's lower triangle (F(i, j), i >= j).
// X is n x m column-major with leading dimension n.
template <class T>
index_t damped_solve(const Strided<T>& F, const Strided<T>& G, T damping, T* x);

// Same with F's memory (n x n, leading dimension ldf, lower triangle) used as
// the factorisation workspace: F is destroyed. Used when F was just built by
// us, so that a solve holds one n x n buffer, not two.
template <class T>
index_t damped_solve_in_place(T* f, index_t n, index_t ldf, const Strided<T>& G, T damping, T* x);

}  // namespace ngdfast
