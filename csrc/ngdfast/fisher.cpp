#include "ngdfast/fisher.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ngdfast/gram.hpp"
#include "ngdfast/host_blas.hpp"
#include "ngdfast/parallel.hpp"

namespace ngdfast {

template <class T>
void fisher(const Strided<T>& J, const T* w, T* out, index_t ldo, T alpha, T beta, bool write_upper,
            bool fresh_out) {
    const index_t N = J.rows, P = J.cols;
    // NumPy's BLAS takes the product when another thread is running (see
    // host_blas.hpp). Its SYRK updates the lower triangle only; the upper is
    // then mirrored, which is the elementwise EMA of both triangles exactly
    // when the old out is symmetric (as every out fisher wrote is). A
    // non-symmetric EMA target stays on the pool.
    bool host = borrow_host_blas(double(N) * double(P) * double(P));
    if (host && beta != T(0) && write_upper) host = exactly_symmetric(out, P, ldo);
    if (!host && fresh_out && P * ldo * index_t(sizeof(T)) >= (index_t(8) << 20)) {
        // One store per 4 KiB page faults it in; the tiles then overwrite it.
        const index_t per_page = 4096 / index_t(sizeof(T)), total = P * ldo;
        const index_t n_pages = (total + per_page - 1) / per_page;
        Team team(true);
        const index_t chunks = 4 * team.slots();
        const index_t step = (n_pages + chunks - 1) / chunks;
        team.run(chunks, [&](std::ptrdiff_t c, int) {
            const index_t p1 = std::min(n_pages, (c + 1) * step);
            for (index_t p = c * step; p < p1; ++p) reinterpret_cast<volatile T*>(out)[p * per_page] = T(0);
        });
    }
    Panel<T> panel;
    T scale = alpha;
    if (w) {
        std::vector<T> sw(static_cast<std::size_t>(N));
        for (index_t i = 0; i < N; ++i) sw[static_cast<std::size_t>(i)] = std::sqrt(w[i]);
        panel = make_panel(J, sw.data());
    } else {
        panel = make_panel(J);
        scale = alpha / T(N);
    }
    // F = J^T J = X X^T with X = J^T (P x N): memory holds X itself when the
    // panel is row-major (J^T column-major).
    GramOperand<T> x{panel.data, panel.ld, !panel.row_major, P, N};
    gram(x, scale, out, ldo, beta, write_upper, 0, nullptr, host);
}

template void fisher<float>(const Strided<float>&, const float*, float*, index_t, float, float, bool, bool);
template void fisher<double>(const Strided<double>&, const double*, double*, index_t, double, double, bool, bool);

}  // namespace ngdfast
