#include "ngdfast/gram.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

#include "ngdfast/host_blas.hpp"
#include "ngdfast/parallel.hpp"
#include "ngdfast/tiles.hpp"

namespace ngdfast {
namespace {

template <class T>
std::vector<T>& scratch(std::size_t n) {
    thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf;
}

// Writes block t (bi x bj, column-major, leading dimension bi) of X X^T whose
// top-left corner is (i0, j0), i0 >= j0 (i0 == j0: a square diagonal block),
// into out by out = beta*out + t, in both triangles. One pass over 32 x 32
// sub-blocks: each is read once, while it is in L1, for its column-major
// (lower) and transposed (upper) destinations.
template <class T>
void store_tile(const T* t, index_t bi, index_t bj, index_t i0, index_t j0, T* out, index_t ldo, T beta,
                bool write_upper) {
    const bool diag = i0 == j0;
    constexpr index_t kb = 32;
    for (index_t jb = 0; jb < bj; jb += kb) {
        const index_t je = std::min(bj, jb + kb);
        for (index_t ib = diag ? jb : 0; ib < bi; ib += kb) {
            const index_t ie = std::min(bi, ib + kb);
            for (index_t j = jb; j < je; ++j) {  // out(i0 + i, j0 + j), lower
                const index_t is = diag ? std::max(ib, j) : ib;
                T* col = out + (j0 + j) * ldo + i0;
                const T* tc = t + j * bi;
                if (beta == T(0))
                    for (index_t i = is; i < ie; ++i) col[i] = tc[i];
                else
                    for (index_t i = is; i < ie; ++i) col[i] = beta * col[i] + tc[i];
            }
            if (!write_upper) continue;
            for (index_t i = ib; i < ie; ++i) {  // out(j0 + j, i0 + i), upper
                const index_t je2 = diag ? std::min(je, i) : je;
                T* row = out + (i0 + i) * ldo + j0;
                if (beta == T(0))
                    for (index_t j = jb; j < je2; ++j) row[j] = t[i + j * bi];
                else
                    for (index_t j = jb; j < je2; ++j) row[j] = beta * row[j] + t[i + j * bi];
            }
        }
    }
}

template <class T>
void tile_product(const GramOperand<T>& x, index_t i0, index_t bi, index_t j0, index_t bj, index_t k0, index_t bk,
                  T alpha, T* t) {
    if (i0 == j0)
        syrk_lower<T>(x.row_major ? 'T' : 'N', bi, bk, alpha, x.at(i0, k0), x.ld, T(0), t, bi);
    else if (x.row_major)
        gemm<T>('T', 'N', bi, bj, bk, alpha, x.at(i0, k0), x.ld, x.at(j0, k0), x.ld, T(0), t, bi);
    else
        gemm<T>('N', 'T', bi, bj, bk, alpha, x.at(i0, k0), x.ld, x.at(j0, k0), x.ld, T(0), t, bi);
}

// Widest SYRK handed to the host library (see gram's on_host path).
constexpr index_t kHostSyrkMax = 2048;
// Flops of one borrowed GEMM between two Ctrl-C polls (about 0.05-0.1 s on 2 cores).
constexpr double kHostPollFlops = 4.0e9;

// The blocks of the tiled path come in two shapes (Tiles, tiles.hpp, chosen
// at run time for the BLAS in use):
//
// - tall blocks: column panels of about gram_panel, each cut into blocks of
//   up to gram_rows rows, so that the BLAS packs a panel's right operand once
//   and streams the rows past it (Haswell kernels, N=512, P=4096: 384 x 384
//   tiles reached 0.75 of the GEMM rate, blocks of 1536-4096 rows 0.83-0.86).
//   The block buffer (2048 x 384 doubles, 6 MiB) is larger than the caches:
//   the BLAS writes it once per pass over the contraction (OpenBLAS: its
//   GEMM_Q deep), and the store reads it again;
// - square tiles of gram_square, small enough to stay in L2 through those
//   passes and the store: more packing per flop, far less memory traffic.
//
// Which one: tall blocks when the BLAS's passes over this contraction run at
// least 3/4 of their design depth (gram_deep). A shallower pass updates the
// buffer more often per flop, and with faster kernels the product becomes
// bound by that traffic (Haswell kernels, 2 threads, CPU time: square tiles
// 0.89x the tall blocks' at N=128, 1.12x at N=512).
bool use_tall_blocks(index_t k, const Tiles& t) { return gram_deep(k, t.gram_depth); }

// Panel width for outputs larger than one tile: as large as possible (up to
// `widest`) while the lower triangle still holds several square tiles per
// thread for load balance.
index_t choose_block(index_t n, int threads, index_t widest) {
    constexpr index_t kMin = 96;
    index_t nb = (n + widest - 1) / widest;
    while (nb * (nb + 1) / 2 < 4 * threads && (n + nb) / (nb + 1) >= kMin) ++nb;
    index_t b = (n + nb - 1) / nb;
    return (b + 7) / 8 * 8;
}

// One block of the lower triangle: rows [i0, i0 + bi) of column panel
// [j0, j0 + bj); i0 == j0 marks the diagonal block.
struct Block {
    index_t i0, bi, j0, bj;
};

// Column panels of width b, each cut into its diagonal block and the blocks
// below it (at most rows_max rows, equal heights), largest first so that
// the dynamic hand-out ends with small blocks.
std::vector<Block> lower_blocks(index_t n, index_t b, index_t rows_max) {
    std::vector<Block> blocks;
    for (index_t j0 = 0; j0 < n; j0 += b) {
        const index_t bj = std::min(b, n - j0), below = n - j0 - bj;
        blocks.push_back({j0, bj, j0, bj});
        if (below <= 0) continue;
        const index_t parts = (below + rows_max - 1) / rows_max;
        const index_t h = ((below + parts - 1) / parts + 7) / 8 * 8;
        for (index_t i0 = j0 + bj; i0 < n; i0 += h) blocks.push_back({i0, std::min(h, n - i0), j0, bj});
    }
    std::stable_sort(blocks.begin(), blocks.end(),
                     [](const Block& a, const Block& c) { return a.bi * a.bj > c.bi * c.bj; });
    return blocks;
}

bool split_path(index_t n, index_t k, index_t split_max_n, const Tiles& t) {
    return n <= t.gram_split || (n <= split_max_n && k >= 4 * n);
}

// Contraction chunks of the split path: several per thread for dynamic
// balance while each keeps >= 512 columns (shorter SYRKs lose efficiency to
// packing), at least one per thread while each keeps >= 128, and at most
// 64 MiB of n x n partial buffers.
template <class T>
index_t split_chunks(index_t n, index_t k, int threads) {
    if (threads == 1) return 1;
    const index_t by_memory = std::max<index_t>(1, (index_t(64) << 20) / (n * n * index_t(sizeof(T))));
    index_t chunks = std::min<index_t>(4 * threads, k / 512);
    if (chunks < threads) chunks = std::min<index_t>(threads, k / 128);
    return std::max<index_t>(1, std::min(chunks, by_memory));
}

bool parallel_gram(index_t n, index_t k) { return double(n) * double(n) * double(k) >= kParallelFlops; }

// Calls f(i, j) for every i > j < n, in 64-column strips handed out
// dynamically on the pool, 32 x 32 blocks within a strip (so that the
// transposed element (j, i) of column-major storage is touched block-wise).
template <class F>
void for_each_strict_lower(index_t n, const F& f) {
    constexpr index_t strip = 64, kb = 32;
    Team team(double(n) * double(n) >= kParallelElements);
    team.run((n + strip - 1) / strip, [&](std::ptrdiff_t s, int) {
        const index_t j0 = s * strip, j1 = std::min(n, j0 + strip);
        for (index_t ib = j0; ib < n; ib += kb)
            for (index_t jb = j0; jb < j1 && jb <= ib; jb += kb)
                for (index_t j = jb; j < std::min(j1, jb + kb); ++j)
                    for (index_t i = std::max(ib, j + 1); i < std::min(n, ib + kb); ++i) f(i, j);
    });
}

// out(j, i) = out(i, j) for i > j: the upper triangle from the lower.
template <class T>
void mirror_lower(T* out, index_t n, index_t ldo) {
    for_each_strict_lower(n, [&](index_t i, index_t j) { out[j + i * ldo] = out[i + j * ldo]; });
}

}  // namespace

template <class T>
bool exactly_symmetric(const T* out, index_t n, index_t ldo) {
    std::atomic<bool> symmetric{true};
    for_each_strict_lower(n, [&](index_t i, index_t j) {
        if (!(out[j + i * ldo] == out[i + j * ldo])) symmetric.store(false, std::memory_order_relaxed);
    });
    return symmetric.load();
}

template <class T>
bool gram(const GramOperand<T>& x, T alpha, T* out, index_t ldo, T beta, bool write_upper, index_t split_max_n,
          const GramAlong* along, bool on_host) {
    const index_t n = x.n, k = x.k;
    if (n <= 0) return false;
    const Tiles shape = tiles<T>();
    if (on_host) {
        // Never one SYRK over the whole output: OpenBLAS's threaded SYRK
        // (driver/level3/level3_syrk_threaded.c) packs each thread's whole
        // column range at once, GEMM_Q x range elements, into a packing buffer
        // of fixed size (BUFFER_SIZE), and overruns it once a thread's range
        // passes a few ten thousand columns: with NumPy's OpenBLAS on two
        // threads, lowrank_solve at N = 45000-46341 crashed in dgemm_oncopy or
        // returned wrong values. Its threaded GEMM blocks by GEMM_R and has no
        // such limit. So: column panels of at most kHostSyrkMax, the diagonal
        // block by SYRK (ranges <= 2048 columns: <= 6 MiB of packing on x86-64
        // against a buffer of 32 MiB or more), the rows below it by GEMMs.
        const char tr = x.row_major ? 'T' : 'N', tr2 = x.row_major ? 'N' : 'T';
        for (index_t j0 = 0; j0 < n; j0 += kHostSyrkMax) {
            const index_t bj = std::min(kHostSyrkMax, n - j0);
            host_syrk_lower<T>(tr, bj, k, alpha, x.at(j0, 0), x.ld, beta, out + j0 + j0 * ldo, ldo);
            interruption_point();
            // The rows below in slices of about kHostPollFlops each, a Ctrl-C poll after each:
            // one GEMM of a whole panel (8000 x 2048 x 2500) ran for seconds unpolled.
            const index_t rows = std::max<index_t>(
                256, static_cast<index_t>(kHostPollFlops / (2.0 * double(bj) * double(std::max<index_t>(k, 1)))));
            for (index_t i0 = j0 + bj; i0 < n; i0 += rows) {
                const index_t bi = std::min(rows, n - i0);
                host_gemm<T>(tr, tr2, bi, bj, k, alpha, x.at(i0, 0), x.ld, x.at(j0, 0), x.ld, beta,
                             out + i0 + j0 * ldo, ldo);
                interruption_point();
            }
        }
        if (write_upper) mirror_lower(out, n, ldo);
        return false;
    }
    Team team(parallel_gram(n, k));
    const int threads = team.slots();

    if (split_path(n, k, split_max_n, shape)) {
        // Split the contraction into chunks handed out dynamically, each into
        // its own n x n buffer, summed in chunk order afterwards: bitwise
        // reproducible for a given thread count, yet a thread slowed by a
        // competitor (NumPy's OpenBLAS workers spin for ~0.1 s after each
        // NumPy call) simply takes fewer chunks. A static split measured 2x
        // slower right after a NumPy call. Buffers are capped at 64 MiB.
        const index_t nn = checked_mul(n, n, sizeof(T));
        const index_t chunks = split_chunks<T>(n, k, threads);
        const index_t step = (k + chunks - 1) / chunks;
        Matrix<T> parts(nn, chunks);  // uninitialised: only lower triangles are written and read
        if (along) (*along)(-1, chunks, 0);
        team.run(chunks, [&](std::ptrdiff_t c, int) {
            const index_t k0 = c * step, bk = std::max<index_t>(0, std::min(k, k0 + step) - k0);
            T* part = parts.data() + c * nn;
            if (bk == 0)
                for (index_t j = 0; j < n; ++j) std::fill(part + j * n + j, part + (j + 1) * n, T(0));
            else
                syrk_lower<T>(x.row_major ? 'T' : 'N', n, bk, alpha, x.at(0, k0), x.ld, T(0), part, n);
            if (along) (*along)(c, std::min(k0, k), bk);
        });
        T* sum = parts.data();
        for (index_t c = 1; c < chunks; ++c) {
            const T* p = parts.data() + c * nn;
            for (index_t j = 0; j < n; ++j)
                for (index_t i = j; i < n; ++i) sum[i + j * n] += p[i + j * n];
        }
        store_tile(sum, n, n, 0, 0, out, ldo, beta, write_upper);
        return true;
    }

    // Every element is computed by exactly one block with the full
    // contraction in one call: the result does not depend on which thread
    // takes which block.
    const bool tall = use_tall_blocks(k, shape);
    const index_t b = choose_block(n, threads, tall ? shape.gram_panel : shape.gram_square);
    const std::vector<Block> blocks = lower_blocks(n, b, tall ? shape.gram_rows : b);
    team.run(static_cast<std::ptrdiff_t>(blocks.size()), [&](std::ptrdiff_t i, int) {
        const Block& bl = blocks[static_cast<std::size_t>(i)];
        std::vector<T>& t = scratch<T>(static_cast<std::size_t>(bl.bi * bl.bj));
        tile_product(x, bl.i0, bl.bi, bl.j0, bl.bj, 0, k, alpha, t.data());
        store_tile(t.data(), bl.bi, bl.bj, bl.i0, bl.j0, out, ldo, beta, write_upper);
    });
    return false;
}

#define NGDFAST_INSTANTIATE(T)                                                                                    \
    template bool gram<T>(const GramOperand<T>&, T, T*, index_t, T, bool, index_t, const GramAlong*, bool);       \
    template bool exactly_symmetric<T>(const T*, index_t, index_t);
NGDFAST_INSTANTIATE(float)
NGDFAST_INSTANTIATE(double)
#undef NGDFAST_INSTANTIATE

}  // namespace ngdfast
