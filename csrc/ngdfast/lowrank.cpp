#include "ngdfast/lowrank.hpp"

#include <algorithm>
#include <cmath>

#include "ngdfast/cholesky.hpp"
#include "ngdfast/finite.hpp"
#include "ngdfast/gram.hpp"
#include "ngdfast/host_blas.hpp"
#include "ngdfast/parallel.hpp"

namespace ngdfast {
template <class T>
index_t lowrank_solve(const Strided<T>& J, const T* w, const Strided<T>& G, T damping, T* x) {
    const index_t N = J.rows, P = J.cols, m = G.cols;
    const Panel<T> panel = make_panel(J);
    auto jblock = [&](index_t p0) {  // pointer to J(0, p0) in the panel's layout
        return panel.row_major ? panel.data + p0 : panel.data + p0 * panel.ld;
    };
    // B = J X (N x m) over column chunks of J, each into its own partial
    // buffer, summed in chunk order (reproducible for a given thread count).
    copy_to(G, x, P);
    std::vector<T> parts;
    index_t chunks = 0;
    auto jx = [&](std::ptrdiff_t c, index_t p0, index_t bp) {
        T* out = parts.data() + c * N * m;
        if (bp == 0)
            std::fill(out, out + N * m, T(0));
        else  // panel.row_major: memory holds J^T (P x N) column-major.
            gemm<T>(panel.row_major ? 'T' : 'N', 'N', N, m, bp, T(1), jblock(p0), panel.ld, x + p0, P, T(0), out, N);
    };
    // Gram K = J J^T (lower), then K <- D K D + lam I with D = diag(sqrt(w)).
    // Up to N = 640 (and P >= 4N) the contraction over P is split into chunks,
    // each into its own N x N buffer, and each chunk's part of B is computed
    // right after, while those columns of J are still in cache: a pass over J
    // from memory saved. Beyond that the buffers' page faults and their
    // summation cost more than the tiled Gram (same process, 2 threads:
    // N=600 P=10000 split 50 ms vs tiled 55 ms; N=1024 P=4096 85 vs 64 ms).
    const GramAlong along = [&](std::ptrdiff_t c, index_t p0, index_t bp) {
        if (c < 0) {
            chunks = p0;
            parts.resize(static_cast<std::size_t>(checked_mul(chunks, N, m, sizeof(T))));
        } else {
            jx(c, p0, bp);
        }
    };
    // Or all three products on NumPy's BLAS when another thread is running
    // (see host_blas.hpp).
    const bool host = borrow_host_blas(double(N) * double(N) * double(P));
    Matrix<T> K(N, N);
    const GramOperand<T> op{panel.data, panel.ld, panel.row_major, N, P};
    const bool fused = gram(op, T(1), K.data(), N, T(0), false, 640, &along, host);
    require_finite_diagonal(K.data(), N, N);
    std::vector<T> d(static_cast<std::size_t>(N));
    for (index_t i = 0; i < N; ++i) d[static_cast<std::size_t>(i)] = w ? std::sqrt(w[i]) : T(1) / std::sqrt(T(N));
    for (index_t j = 0; j < N; ++j) {
        for (index_t i = j; i < N; ++i) K(i, j) *= d[static_cast<std::size_t>(i)] * d[static_cast<std::size_t>(j)];
        K(j, j) += damping;
    }
    const index_t info = cholesky(K.data(), N, N);
    if (info != 0) return info;

    // Chunks of P for the passes over J not fused with the Gram: several per
    // thread, handed out dynamically, so a thread slowed by a competing
    // process takes fewer.
    Team team(2.0 * double(N) * double(P) * double(m) >= kParallelFlops);
    const index_t pchunks =
        std::min<index_t>(team.slots() == 1 ? 1 : 4 * team.slots(), std::max<index_t>(1, P / 256));
    const index_t step = (P + pchunks - 1) / pchunks;
    if (host) {
        chunks = 1;
        parts.resize(static_cast<std::size_t>(checked_mul(N, m, sizeof(T))));
        host_gemm<T>(panel.row_major ? 'T' : 'N', 'N', N, m, P, T(1), jblock(0), panel.ld, x, P, T(0), parts.data(),
                     N);
    } else if (!fused) {
        chunks = pchunks;
        parts.resize(static_cast<std::size_t>(checked_mul(chunks, N, m, sizeof(T))));
        team.run(chunks, [&](std::ptrdiff_t c, int) {
            const index_t p0 = std::min(P, c * step);
            jx(c, p0, std::min(P, p0 + step) - p0);
        });
    }
    T* B = parts.data();
    for (index_t c = 1; c < chunks; ++c)
        for (index_t i = 0; i < N * m; ++i) B[i] += parts[static_cast<std::size_t>(c * N * m + i)];
    // U = D K^-1 D B, folded with the final 1/lam of the update below.
    for (index_t j = 0; j < m; ++j)
        for (index_t i = 0; i < N; ++i) B[i + j * N] *= d[static_cast<std::size_t>(i)];
    cholesky_solve(K.data(), N, N, B, m, N);
    for (index_t j = 0; j < m; ++j)
        for (index_t i = 0; i < N; ++i) B[i + j * N] *= d[static_cast<std::size_t>(i)];
    // X = (X - J^T U) / lam, rows of X independent.
    const T inv = T(1) / damping;
    if (host) {
        host_gemm<T>(panel.row_major ? 'N' : 'T', 'N', P, m, N, -inv, jblock(0), panel.ld, B, N, inv, x, P);
        return 0;
    }
    team.run(pchunks, [&](std::ptrdiff_t c, int) {
        const index_t p0 = c * step, bp = std::max<index_t>(0, std::min(P, p0 + step) - p0);
        if (bp == 0) return;
        gemm<T>(panel.row_major ? 'N' : 'T', 'N', bp, m, N, -inv, jblock(p0), panel.ld, B, N, inv, x + p0, P);
    });
    return 0;
}

template index_t lowrank_solve<float>(const Strided<float>&, const float*, const Strided<float>&, float, float*);
template index_t lowrank_solve<double>(const Strided<double>&, const double*, const Strided<double>&, double,
                                       double*);

}  // namespace ngdfast
