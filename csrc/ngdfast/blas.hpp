// Tile kernels: column-major BLAS-style GEMM/SYRK/TRSM/POTRF on one thread.
// The blocked, threaded algorithms in gram/cholesky/lowrank/kfac are built
// from these. Two engines: Eigen's own (always present) and, when the Python
// layer loads one, an external BLAS/LAPACK (scipy-openblas32 from PyPI, a
// private copy loaded RTLD_LOCAL and kept single-threaded: all threading is
// ours). Measured on the 2-core reference
// machine, OpenBLAS's single-thread DGEMM is ~1.25x Eigen 3.4's, which decides
// whether the Fisher reaches 0.8 of the machine's GEMM rate.
#pragma once

#include <cstddef>
#include <string>

namespace ngdfast {

using index_t = std::ptrdiff_t;

// Loads `path` privately (RTLD_LOCAL), resolves {prefix}dgemm_ etc. and sets
// that copy to one thread. Returns false and keeps the Eigen engine when
// anything is missing, or when `path` is already loaded in the process (a copy
// others may use: its thread count is left alone); blas_note() says why.
bool load_blas(const std::string& path, const std::string& prefix);
void use_blas(bool enabled);
bool blas_active();
std::string blas_path();
std::string blas_note();
bool blas_loaded();
// The CPU kernels the loaded library dispatched to at run time (OpenBLAS's
// DYNAMIC_ARCH core name, e.g. "Haswell"), or "".
std::string blas_corename();

// C = alpha * op(A) * op(B) + beta * C, op(X) = X or X^T (trans 'N' / 'T').
// beta == 0 means C is not read.
template <class T>
void gemm(char transa, char transb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda,
          const T* b, index_t ldb, T beta, T* c, index_t ldc);

// Lower triangle of C = alpha * op(A) op(A)^T + beta * C; trans 'N': A is n x k,
// 'T': A is k x n. Only the lower triangle of C is referenced.
template <class T>
void syrk_lower(char trans, index_t n, index_t k, T alpha, const T* a, index_t lda, T beta, T* c, index_t ldc);

// B = B * L^-T (side 'R') or B = L^-1 B / L^-T B (side 'L', trans 'N' / 'T'),
// L lower triangular with non-unit diagonal, B m x n.
template <class T>
void trsm_lower(char side, char trans, index_t m, index_t n, const T* l, index_t ldl, T* b, index_t ldb);

// In-place lower Cholesky of an n x n block; returns 0 or the 1-based index of
// the first non-positive (or NaN) pivot, as LAPACK's xPOTRF.
template <class T>
index_t potrf_lower(index_t n, T* a, index_t lda);

}  // namespace ngdfast
