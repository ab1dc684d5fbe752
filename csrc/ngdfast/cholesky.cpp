#include "ngdfast/cholesky.hpp"

#include <algorithm>

#include "ngdfast/parallel.hpp"
#include "ngdfast/tiles.hpp"

namespace ngdfast {
template <class T>
index_t cholesky(T* a, index_t n, index_t lda) {
    if (n <= 0) return 0;
    const double flops = double(n) * double(n) * double(n) / 3.0;
    if (flops < kParallelFlops || n <= 128) return potrf_lower<T>(n, a, lda);
    Team team(true);
    // Panel width (the inner dimension of every update GEMM) and row chunk of
    // the update and solve tasks, chosen for the BLAS in use (tiles.hpp).
    const Tiles shape = tiles<T>();
    const index_t b = shape.chol_panel, rb = shape.chol_rows;
    auto A = [&](index_t i, index_t j) { return a + i + j * lda; };
    for (index_t k0 = 0; k0 < n; k0 += b) {
        const index_t kb = std::min(b, n - k0);
        const index_t info = potrf_lower<T>(kb, A(k0, k0), lda);
        if (info != 0) return k0 + info;
        const index_t r0 = k0 + kb, m = n - r0;
        if (m == 0) break;
        // L21 = A21 L11^-T, rows in independent chunks.
        const index_t n_row_chunks = (m + rb - 1) / rb;
        team.run(n_row_chunks, [&](std::ptrdiff_t c, int) {
            const index_t i0 = r0 + c * rb, bi = std::min(rb, n - i0);
            trsm_lower<T>('R', 'T', bi, kb, A(k0, k0), lda, A(i0, k0), lda);
        });
        // A22 -= L21 L21^T on the lower triangle, by column panels of width
        // b split into row chunks of rb. Diagonal blocks are updated whole by
        // GEMM: the strict upper part they touch is never read.
        const index_t n_col = (m + b - 1) / b;
        std::vector<std::pair<index_t, index_t>> tasks;  // (column start, row start)
        for (index_t jc = 0; jc < n_col; ++jc) {
            const index_t j0 = r0 + jc * b;
            for (index_t i0 = j0; i0 < n; i0 += rb) tasks.emplace_back(j0, i0);
        }
        team.run(static_cast<std::ptrdiff_t>(tasks.size()), [&](std::ptrdiff_t t, int) {
            const index_t j0 = tasks[static_cast<std::size_t>(t)].first;
            const index_t i0 = tasks[static_cast<std::size_t>(t)].second;
            const index_t bj = std::min(b, n - j0), bi = std::min(rb, n - i0);
            gemm<T>('N', 'T', bi, bj, kb, T(-1), A(i0, k0), lda, A(j0, k0), lda, T(1), A(i0, j0), lda);
        });
    }
    return 0;
}

template <class T>
void cholesky_solve(const T* l, index_t n, index_t ldl, T* b, index_t m, index_t ldb) {
    if (n <= 0 || m <= 0) return;
    // Threads split the right-hand sides, and each reads all of L: below ~16
    // columns the solve is bound by that read and a second thread only slows
    // it (n=1025: m=8 0.80 ms on one thread, 1.24 ms on two; m=64 4.3 vs 2.7).
    const double flops = 2.0 * double(n) * double(n) * double(m);
    Team team(flops >= kParallelFlops && m >= 16);
    const index_t chunks = std::min<index_t>(m, team.slots());
    const index_t step = (m + chunks - 1) / chunks;
    team.run(chunks, [&](std::ptrdiff_t c, int) {
        const index_t j0 = c * step, bm = std::min(m, j0 + step) - j0;
        if (bm <= 0) return;
        trsm_lower<T>('L', 'N', n, bm, l, ldl, b + j0 * ldb, ldb);
        trsm_lower<T>('L', 'T', n, bm, l, ldl, b + j0 * ldb, ldb);
    });
}

template <class T>
void cholesky_solve(const T* l, index_t n, index_t ldl, const Strided<T>& G, T* x) {
    copy_to(G, x, n);
    cholesky_solve(l, n, ldl, x, G.cols, n);
}

namespace {

// F + damping I (lower triangle) into l, factored in place.
template <class T>
index_t factor_damped(const Strided<T>& F, T damping, T* l) {
    const index_t n = F.rows;
    copy_lower_shifted(F, damping, l, n, double(n) * double(n) >= kParallelElements);
    return cholesky(l, n, n);
}

}  // namespace

template <class T>
index_t cholesky_factor(const Strided<T>& F, T damping, T* l) {
    const index_t n = F.rows;
    const index_t info = factor_damped(F, damping, l);
    for (index_t j = 1; j < n; ++j) std::fill(l + j * n, l + j * n + j, T(0));
    return info;
}

template <class T>
index_t damped_solve_in_place(T* f, index_t n, index_t ldf, const Strided<T>& G, T damping, T* x) {
    for (index_t j = 0; j < n; ++j) f[j + j * ldf] += damping;
    const index_t info = cholesky(f, n, ldf);
    if (info != 0) return info;
    cholesky_solve(f, n, ldf, G, x);
    return 0;
}

template <class T>
index_t damped_solve(const Strided<T>& F, const Strided<T>& G, T damping, T* x) {
    const index_t n = F.rows;
    Matrix<T> work(n, n);
    const index_t info = factor_damped(F, damping, work.data());
    if (info != 0) return info;
    cholesky_solve(work.data(), n, n, G, x);
    return 0;
}

#define NGDFAST_INSTANTIATE(T)                                                                       \
    template index_t cholesky<T>(T*, index_t, index_t);                                              \
    template void cholesky_solve<T>(const T*, index_t, index_t, T*, index_t, index_t);               \
    template void cholesky_solve<T>(const T*, index_t, index_t, const Strided<T>&, T*);              \
    template index_t cholesky_factor<T>(const Strided<T>&, T, T*);                                   \
    template index_t damped_solve<T>(const Strided<T>&, const Strided<T>&, T, T*);                   \
    template index_t damped_solve_in_place<T>(T*, index_t, index_t, const Strided<T>&, T, T*);
NGDFAST_INSTANTIATE(float)
NGDFAST_INSTANTIATE(double)
#undef NGDFAST_INSTANTIATE

}  // namespace ngdfast
