#include "ngdfast/refine.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ngdfast/cholesky.hpp"
#include "ngdfast/finite.hpp"
#include "ngdfast/fisher.hpp"
#include "ngdfast/gram.hpp"
#include "ngdfast/host_blas.hpp"
#include "ngdfast/lowrank.hpp"
#include "ngdfast/parallel.hpp"

namespace ngdfast {
namespace {

constexpr double kEps = 0.5 * std::numeric_limits<double>::epsilon();  // LAPACK's dlamch('E')
constexpr index_t kTile = 64;       // column tile of the lower-triangle passes
constexpr index_t kRowChunk = 256;  // row chunk of the residual's GEMM tiles

// Column ranges [b[t], b[t + 1]) of the lower triangle of an n x n matrix with
// about equal areas. The count depends on the sizes only (never on the thread
// count), so sums over tasks in task order are reproducible bitwise. Each task
// owns an n x m partial buffer: the count is capped to keep those under 64 MiB.
std::vector<index_t> lower_partition(index_t n, index_t m) {
    const index_t budget = std::max<index_t>(1, (index_t(8) << 20) / std::max<index_t>(1, n * m));
    const index_t tasks = std::max<index_t>(1, std::min<index_t>({16, n / 128, budget}));
    std::vector<index_t> b{0};
    const double total = 0.5 * double(n) * double(n + 1);
    double area = 0;
    for (index_t j = 0; j < n; ++j) {
        area += double(n - j);
        if (area >= total * double(b.size()) / double(tasks) && index_t(b.size()) < tasks) b.push_back(j + 1);
    }
    if (b.back() != n) b.push_back(n);
    return b;
}

// Element (i, j) of a panel.
template <class T>
inline T at(const Panel<T>& p, index_t i, index_t j) {
    return p.row_major ? p.data[j + i * p.ld] : p.data[i + j * p.ld];
}

// Calls f(i, j, F(i, j)) for every i >= j of the columns [j0, j1), in tiles
// that walk memory in the panel's order.
template <class Fn>
void for_lower(const Panel<double>& p, index_t n, index_t j0, index_t j1, Fn&& f) {
    for (index_t jt = j0; jt < j1; jt += kTile) {
        const index_t je = std::min(j1, jt + kTile);
        for (index_t it = jt; it < n; it += kTile) {
            const index_t ie = std::min(n, it + kTile);
            if (p.row_major) {
                for (index_t i = it; i < ie; ++i) {
                    const double* row = p.data + i * p.ld;
                    for (index_t j = jt, je2 = std::min(je, i + 1); j < je2; ++j) f(i, j, row[j]);
                }
            } else {
                for (index_t j = jt; j < je; ++j) {
                    const double* col = p.data + j * p.ld;
                    for (index_t i = std::max(it, j); i < ie; ++i) f(i, j, col[i]);
                }
            }
        }
    }
}

double column_max_abs(const double* v, index_t n) {
    double m = 0;
    for (index_t i = 0; i < n; ++i) {
        const double a = std::abs(v[i]);
        if (!(a <= m)) m = a;  // NaN propagates
    }
    return m;
}

// The refinement loop shared by the dense and sample-space solves: A x = B for
// the n x m B, A applied exactly (float64) by residual(x, r): r = B - A x, and
// approximately inverted by the float32 factor.
template <class Residual>
MixedResult refine(const MixedFactor& fac, const Strided<double>& B, index_t m, double* x, Residual&& residual) {
    const index_t n = fac.n;
    std::vector<double> r(static_cast<std::size_t>(n * m)), d(static_cast<std::size_t>(n * m));
    std::vector<double> prev(static_cast<std::size_t>(m));
    std::vector<char> done(static_cast<std::size_t>(m), 0);
    copy_to(B, x, n);
    mixed_factor_solve(fac, x, m);
    for (index_t c = 0; c < m; ++c) prev[static_cast<std::size_t>(c)] = column_max_abs(x + c * n, n);
    const double cte = fac.norm_inf * kEps * std::sqrt(double(n));
    std::vector<char> small_residual(static_cast<std::size_t>(m), 0);
    int applied = 0;
    for (int it = 0;; ++it) {
        residual(x, r.data());
        for (index_t c = 0; c < m; ++c) {
            const double rn = column_max_abs(r.data() + c * n, n), xn = column_max_abs(x + c * n, n);
            if (!std::isfinite(rn) || !std::isfinite(xn)) return {0, applied, MixedStatus::stalled};
            small_residual[static_cast<std::size_t>(c)] = rn <= xn * cte;
        }
        if (it == kMaxRefinements) break;
        std::copy(r.begin(), r.end(), d.begin());
        mixed_factor_solve(fac, d.data(), m);
        bool all = true, any = false;
        for (index_t c = 0; c < m; ++c) {
            const std::size_t cc = static_cast<std::size_t>(c);
            if (done[cc]) continue;
            double* xc = x + c * n;
            const double* dc = d.data() + c * n;
            const double dn = column_max_abs(dc, n);
            if (!(dn <= 0.5 * prev[cc])) {
                // No longer converging: at the limiting accuracy when the backward
                // error is already that of a float64 solve, else float32 cannot do it.
                if (!small_residual[cc]) return {0, applied, MixedStatus::stalled};
                done[cc] = 1;
                continue;
            }
            prev[cc] = dn;
            for (index_t i = 0; i < n; ++i) xc[i] += dc[i];
            any = true;
            if (dn <= kEps * column_max_abs(xc, n)) done[cc] = 1;  // below float64 rounding
            all = all && done[cc];
        }
        applied += any;
        if (all) return {0, applied, MixedStatus::converged};
    }
    for (index_t c = 0; c < m; ++c)
        if (!done[static_cast<std::size_t>(c)] && !small_residual[static_cast<std::size_t>(c)])
            return {0, applied, MixedStatus::stalled};
    return {0, applied, MixedStatus::converged};
}

template <class Fallback>
MixedResult dense_mixed(const Strided<double>& F, const Strided<double>& G, double damping, double* x,
                        Fallback&& fallback) {
    const MixedFactor fac = mixed_factor(F, damping);
    MixedResult res;
    if (fac.info != 0) {
        res.status = MixedStatus::factor_failed;
    } else {
        res = refine(fac, G, G.cols, x, [&](const double* xs, double* r) { damped_residual(F, damping, G, xs, r, G.cols); });
        if (res.status == MixedStatus::converged) return res;
    }
    res.info = fallback();
    return res;
}

// ||F + damping I||_inf from F's lower triangle, in one pass that also calls
// visit(i, j, v) with v = (F + damping I)(i, j) for every i >= j. Row sums are
// kept per task and added in task order: the result does not depend on the
// thread count.
template <class Visit>
double damped_norm_pass(const Strided<double>& F, double damping, Visit&& visit) {
    const index_t n = F.rows;
    const Panel<double> p = make_panel(F);
    const std::vector<index_t> bounds = lower_partition(n, 1);
    const index_t tasks = index_t(bounds.size()) - 1;
    std::vector<double> rows(static_cast<std::size_t>(tasks * n), 0.0);
    Team team(double(n) * double(n) >= kParallelElements);
    team.run(tasks, [&](std::ptrdiff_t t, int) {
        double* rs = rows.data() + t * n;
        for_lower(p, n, bounds[static_cast<std::size_t>(t)], bounds[static_cast<std::size_t>(t) + 1],
                  [&](index_t i, index_t j, double v) {
                      if (i == j) {
                          v += damping;
                          rs[i] += std::abs(v);
                      } else {
                          rs[i] += std::abs(v);
                          rs[j] += std::abs(v);
                      }
                      visit(i, j, v);
                  });
    });
    double norm = 0;
    for (index_t i = 0; i < n; ++i) {
        double sum = 0;
        for (index_t t = 0; t < tasks; ++t) sum += rows[static_cast<std::size_t>(t * n + i)];
        norm = std::max(norm, sum);
    }
    return norm;
}

}  // namespace

MixedFactor mixed_factor(const Strided<double>& F, double damping) {
    MixedFactor f;
    const index_t n = F.rows;
    f.n = n;
    f.scale.resize(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) {
        const double a = F(i, i) + damping;
        if (!(a > 0) || !std::isfinite(a)) {
            f.info = i + 1;
            return f;
        }
        f.scale[static_cast<std::size_t>(i)] = 1.0 / std::sqrt(a);
    }
    f.l = Matrix<float>(n, n);
    float* l = f.l.data();
    const double* s = f.scale.data();
    // One pass over F: the norm and the scaled float32 copy together.
    f.norm_inf = damped_norm_pass(F, damping, [&](index_t i, index_t j, double v) {
        l[i + j * n] = static_cast<float>(v * s[i] * s[j]);
    });
    f.info = cholesky<float>(l, n, n);
    return f;
}

void mixed_factor_solve(const MixedFactor& f, double* r, index_t m) {
    const index_t n = f.n;
    std::vector<float> y(static_cast<std::size_t>(n * m));
    std::vector<double> mu(static_cast<std::size_t>(m));
    const double* s = f.scale.data();
    for (index_t c = 0; c < m; ++c) {
        double* rc = r + c * n;
        double big = 0;
        for (index_t i = 0; i < n; ++i) big = std::max(big, std::abs(s[i] * rc[i]));
        // Normalised to max 1, so that float32 holds it whatever its scale.
        const double inv = big > 0 && std::isfinite(big) ? 1.0 / big : 1.0;
        mu[static_cast<std::size_t>(c)] = big > 0 && std::isfinite(big) ? big : 1.0;
        float* yc = y.data() + c * n;
        for (index_t i = 0; i < n; ++i) yc[i] = static_cast<float>(s[i] * rc[i] * inv);
    }
    cholesky_solve<float>(f.l.data(), n, n, y.data(), m, n);
    for (index_t c = 0; c < m; ++c) {
        double* rc = r + c * n;
        const float* yc = y.data() + c * n;
        const double scale = mu[static_cast<std::size_t>(c)];
        for (index_t i = 0; i < n; ++i) rc[i] = double(yc[i]) * scale * s[i];
    }
}

void damped_residual(const Strided<double>& F, double damping, const Strided<double>& G, const double* x, double* r,
                     index_t m) {
    const index_t n = F.rows;
    const Panel<double> p = make_panel(F);
    const std::vector<index_t> bounds = lower_partition(n, m);
    const index_t tasks = index_t(bounds.size()) - 1;
    std::vector<double> parts(static_cast<std::size_t>(tasks * n * m));
    Team team(double(n) * double(n) * double(m) >= kParallelFlops);
    team.run(tasks, [&](std::ptrdiff_t t, int) {
        double* y = parts.data() + t * n * m;
        std::fill(y, y + n * m, 0.0);
        const index_t j0 = bounds[static_cast<std::size_t>(t)], j1 = bounds[static_cast<std::size_t>(t) + 1];
        for (index_t jt = j0; jt < j1; jt += kTile) {
            const index_t je = std::min(j1, jt + kTile), bj = je - jt;
            // Diagonal tile: its lower triangle only.
            for (index_t j = jt; j < je; ++j)
                for (index_t i = j; i < je; ++i) {
                    const double v = at(p, i, j);
                    for (index_t c = 0; c < m; ++c) {
                        y[i + c * n] += v * x[j + c * n];
                        if (i > j) y[j + c * n] += v * x[i + c * n];
                    }
                }
            // Below it, each tile A used twice while in cache: y_i += A x_j, y_j += A^T x_i.
            for (index_t i0 = je; i0 < n; i0 += kRowChunk) {
                const index_t bi = std::min(n, i0 + kRowChunk) - i0;
                if (p.row_major) {  // memory holds A^T (bj x bi) column-major
                    const double* a = p.data + jt + i0 * p.ld;
                    gemm<double>('T', 'N', bi, m, bj, 1.0, a, p.ld, x + jt, n, 1.0, y + i0, n);
                    gemm<double>('N', 'N', bj, m, bi, 1.0, a, p.ld, x + i0, n, 1.0, y + jt, n);
                } else {
                    const double* a = p.data + i0 + jt * p.ld;
                    gemm<double>('N', 'N', bi, m, bj, 1.0, a, p.ld, x + jt, n, 1.0, y + i0, n);
                    gemm<double>('T', 'N', bj, m, bi, 1.0, a, p.ld, x + i0, n, 1.0, y + jt, n);
                }
            }
        }
    });
    for (index_t c = 0; c < m; ++c)
        for (index_t i = 0; i < n; ++i) {
            double sum = 0;
            for (index_t t = 0; t < tasks; ++t) sum += parts[static_cast<std::size_t>(t * n * m + i + c * n)];
            r[i + c * n] = G(i, c) - damping * x[i + c * n] - sum;
        }
}

MixedResult damped_solve_mixed(const Strided<double>& F, const Strided<double>& G, double damping, double* x) {
    return dense_mixed(F, G, damping, x, [&] { return damped_solve<double>(F, G, damping, x); });
}

MixedResult natural_gradient_dense_mixed(const Strided<double>& J, const double* w, const Strided<double>& G,
                                         double damping, double* x) {
    const index_t P = J.cols;
    Matrix<double> f(P, P);  // F, kept for the residuals; the fallback factors it in place
    fisher<double>(J, w, f.data(), P, 1.0, 0.0, false);
    require_finite_diagonal(f.data(), P, P);
    const Strided<double> F{f.data(), P, P, 1, P};
    return dense_mixed(F, G, damping, x, [&] { return damped_solve_in_place<double>(f.data(), P, P, G, damping, x); });
}

MixedResult lowrank_solve_mixed(const Strided<double>& J, const double* w, const Strided<double>& G, double damping,
                                double* x) {
    const index_t N = J.rows, P = J.cols, m = G.cols;
    auto fallback = [&](MixedStatus why, int iterations) {
        MixedResult res{0, iterations, why};
        res.info = lowrank_solve<double>(J, w, G, damping, x);
        return res;
    };
    const Panel<double> panel = make_panel(J);
    auto jblock = [&](index_t p0) { return panel.row_major ? panel.data + p0 : panel.data + p0 * panel.ld; };
    const char tn = panel.row_major ? 'T' : 'N', nt = panel.row_major ? 'N' : 'T';
    std::vector<double> d(static_cast<std::size_t>(N));
    for (index_t i = 0; i < N; ++i) d[static_cast<std::size_t>(i)] = w ? std::sqrt(w[i]) : 1.0 / std::sqrt(double(N));

    // Chunks of P, handed out dynamically: narrow enough that a chunk of J
    // (N x width doubles, ~256 KiB) is still in cache for the second product of
    // a residual pass; their count depends on the sizes only (reproducible
    // sums), capped to keep the per-chunk N x m parts under 32 MiB.
    const index_t width = std::max<index_t>(32, (index_t(32) << 10) / std::max<index_t>(1, N));
    const index_t chunks = std::max<index_t>(
        1, std::min<index_t>((P + width - 1) / width, (index_t(4) << 20) / std::max<index_t>(1, N * m)));
    const index_t step = (P + chunks - 1) / chunks;
    auto range = [&](std::ptrdiff_t c) {
        const index_t p0 = std::min(P, index_t(c) * step);
        return std::make_pair(p0, std::min(P, p0 + step) - p0);
    };
    // While another thread of the process runs (NumPy's spinning BLAS workers), the
    // products go to NumPy's BLAS and our passes stay on the calling thread, as in
    // lowrank_solve (host_blas.hpp).
    const bool host = borrow_host_blas(double(N) * double(N) * double(P));
    Team team(!host && 2.0 * double(N) * double(P) * double(m + 1) >= kParallelFlops);
    std::vector<double> parts(static_cast<std::size_t>(chunks * N * m));
    auto sum_parts = [&](double* out) {  // out = sum of the chunks' N x m parts, in chunk order
        std::copy(parts.begin(), parts.begin() + N * m, out);
        for (index_t c = 1; c < chunks; ++c)
            for (index_t i = 0; i < N * m; ++i) out[i] += parts[static_cast<std::size_t>(c * N * m + i)];
    };

    // One pass over J: Jd in float32 (the Gram's operand) and b = J g.
    copy_to(G, x, P);
    const index_t ld32 = panel.row_major ? P : N;
    Matrix<float> j32(N, P);
    float* js = j32.data();
    team.run(chunks, [&](std::ptrdiff_t c, int) {
        const auto [p0, bp] = range(c);
        if (panel.row_major) {
            for (index_t i = 0; i < N; ++i) {
                const double* src = panel.data + i * panel.ld + p0;
                float* dst = js + i * ld32 + p0;
                const double di = d[static_cast<std::size_t>(i)];
                for (index_t q = 0; q < bp; ++q) dst[q] = static_cast<float>(di * src[q]);
            }
        } else {
            for (index_t q = p0; q < p0 + bp; ++q) {
                const double* src = panel.data + q * panel.ld;
                float* dst = js + q * ld32;
                for (index_t i = 0; i < N; ++i) dst[i] = static_cast<float>(d[static_cast<std::size_t>(i)] * src[i]);
            }
        }
        if (host) return;
        double* out = parts.data() + c * N * m;
        if (bp == 0)
            std::fill(out, out + N * m, 0.0);
        else
            gemm<double>(tn, 'N', N, m, bp, 1.0, jblock(p0), panel.ld, x + p0, P, 0.0, out, N);
    });
    std::vector<double> b(static_cast<std::size_t>(N * m));
    if (host)
        host_gemm<double>(tn, 'N', N, m, P, 1.0, jblock(0), panel.ld, x, P, 0.0, b.data(), N);
    else
        sum_parts(b.data());
    for (index_t c = 0; c < m; ++c)
        for (index_t i = 0; i < N; ++i) b[static_cast<std::size_t>(i + c * N)] *= d[static_cast<std::size_t>(i)];

    // K = Jd Jd^T + lam I in float32, scaled to unit diagonal.
    MixedFactor fac;
    fac.n = N;
    fac.l = Matrix<float>(N, N);
    float* k = fac.l.data();
    const GramOperand<float> op{js, ld32, panel.row_major, N, P};
    gram<float>(op, 1.0f, k, N, 0.0f, false, 640, nullptr, host);
    j32 = Matrix<float>();
    fac.scale.resize(static_cast<std::size_t>(N));
    std::vector<double> rows(static_cast<std::size_t>(N), 0.0);
    for (index_t j = 0; j < N; ++j) {
        const double kjj = double(k[j + j * N]) + damping;
        if (!(kjj > 0) || !std::isfinite(kjj)) return fallback(MixedStatus::factor_failed, 0);
        fac.scale[static_cast<std::size_t>(j)] = 1.0 / std::sqrt(kjj);
        rows[static_cast<std::size_t>(j)] += kjj;
        for (index_t i = j + 1; i < N; ++i) {
            const double v = std::abs(double(k[i + j * N]));
            rows[static_cast<std::size_t>(i)] += v;
            rows[static_cast<std::size_t>(j)] += v;
        }
    }
    for (index_t i = 0; i < N; ++i) fac.norm_inf = std::max(fac.norm_inf, rows[static_cast<std::size_t>(i)]);
    for (index_t j = 0; j < N; ++j) {
        const double sj = fac.scale[static_cast<std::size_t>(j)];
        k[j + j * N] = static_cast<float>((double(k[j + j * N]) + damping) * sj * sj);
        for (index_t i = j + 1; i < N; ++i)
            k[i + j * N] = static_cast<float>(double(k[i + j * N]) * fac.scale[static_cast<std::size_t>(i)] * sj);
    }
    if (cholesky<float>(k, N, N) != 0) return fallback(MixedStatus::factor_failed, 0);

    // Refine K u = b; K u = Jd (Jd^T u) + lam u in one pass over J per step
    // (each chunk's J_c^T v and J_c (.) while its columns are in cache).
    std::vector<double> u(static_cast<std::size_t>(N * m)), du(static_cast<std::size_t>(N * m));
    std::vector<double> v(static_cast<std::size_t>(P * m));
    auto scaled = [&](const double* src) {
        for (index_t c = 0; c < m; ++c)
            for (index_t i = 0; i < N; ++i) du[static_cast<std::size_t>(i + c * N)] = d[static_cast<std::size_t>(i)] * src[i + c * N];
    };
    const Strided<double> B{b.data(), N, m, 1, N};
    const MixedResult res = refine(fac, B, m, u.data(), [&](const double* us, double* r) {
        scaled(us);
        if (host) {
            host_gemm<double>(nt, 'N', P, m, N, 1.0, jblock(0), panel.ld, du.data(), N, 0.0, v.data(), P);
            host_gemm<double>(tn, 'N', N, m, P, 1.0, jblock(0), panel.ld, v.data(), P, 0.0, r, N);
        } else {
            team.run(chunks, [&](std::ptrdiff_t c, int) {
            const auto [p0, bp] = range(c);
            double* out = parts.data() + c * N * m;
            if (bp == 0) {
                std::fill(out, out + N * m, 0.0);
                return;
            }
            gemm<double>(nt, 'N', bp, m, N, 1.0, jblock(p0), panel.ld, du.data(), N, 0.0, v.data() + p0, P);
            gemm<double>(tn, 'N', N, m, bp, 1.0, jblock(p0), panel.ld, v.data() + p0, P, 0.0, out, N);
            });
            sum_parts(r);
        }
        for (index_t c = 0; c < m; ++c)
            for (index_t i = 0; i < N; ++i) {
                const index_t e = i + c * N;
                r[e] = b[static_cast<std::size_t>(e)] - d[static_cast<std::size_t>(i)] * r[e] - damping * us[e];
            }
    });
    if (res.status != MixedStatus::converged) return fallback(res.status, res.iterations);

    // x = (g - Jd^T u) / lam.
    scaled(u.data());
    const double inv = 1.0 / damping;
    if (host) {
        host_gemm<double>(nt, 'N', P, m, N, -inv, jblock(0), panel.ld, du.data(), N, inv, x, P);
        return res;
    }
    team.run(chunks, [&](std::ptrdiff_t c, int) {
        const auto [p0, bp] = range(c);
        if (bp > 0) gemm<double>(nt, 'N', bp, m, N, -inv, jblock(p0), panel.ld, du.data(), N, inv, x + p0, P);
    });
    return res;
}

double damped_norm_inf(const Strided<double>& F, double damping) {
    return damped_norm_pass(F, damping, [](index_t, index_t, double) {});
}

PcgResult pcg_solve(const Strided<double>& F, double damping, const MixedFactor& factor, const Strided<double>& G,
                    double tol, int max_iter, double* x, bool factor_of_F) {
    const index_t n = F.rows, m = G.cols;
    // ||A||_inf costs a pass over F. Until the true residual is first checked, the factor's
    // own norm (of an older matrix: a few per cent off) serves the recurrence's tests and the
    // prediction, so an attempt given up early never pays for that pass.
    double anorm = factor.norm_inf;
    bool exact_norm = factor_of_F;
    const std::size_t size = static_cast<std::size_t>(n * m);
    std::vector<double> r(size), z(size), zold(size), p(size), q(size), zero(size, 0.0);
    std::vector<double> rz(static_cast<std::size_t>(m));
    std::vector<char> done(static_cast<std::size_t>(m), 0);
    std::vector<double> eta0(static_cast<std::size_t>(m), 0.0);
    const Strided<double> Z{zero.data(), n, m, 1, n};
    auto dot = [&](const double* a, const double* b) {
        double s = 0;
        for (index_t i = 0; i < n; ++i) s += a[i] * b[i];
        return s;
    };
    // Normwise backward error of column c small enough.
    auto converged = [&](index_t c) {
        return column_max_abs(r.data() + c * n, n) <= tol * anorm * column_max_abs(x + c * n, n);
    };
    auto eta = [&](index_t c) {  // 0 when undefined (x = 0): no prediction from it
        const double den = anorm * column_max_abs(x + c * n, n);
        return den > 0 ? column_max_abs(r.data() + c * n, n) / den : 0.0;
    };
    // Whether the rate observed over `it` iterations predicts that max_iter cannot reach tol.
    auto hopeless = [&](int it) {
        const double limit = it == 1 ? 2.0 * max_iter : double(max_iter);
        for (index_t c = 0; c < m; ++c) {
            const std::size_t cc = static_cast<std::size_t>(c);
            if (done[cc] || !(eta0[cc] > 0)) continue;
            const double e = eta(c);
            if (!(e > 0)) continue;
            const double rate = std::pow(e / eta0[cc], 1.0 / it);
            if (!(rate < 1) || double(it) + std::log(tol / e) / std::log(rate) > limit) return true;
        }
        return false;
    };
    copy_to(G, x, n);
    mixed_factor_solve(factor, x, m);
    damped_residual(F, damping, G, x, r.data(), m);
    for (index_t c = 0; c < m; ++c) eta0[static_cast<std::size_t>(c)] = eta(c);
    bool restart = true;
    for (int it = 0;; ++it) {
        if (restart) {  // p = z = M^-1 r
            std::copy(r.begin(), r.end(), z.begin());
            mixed_factor_solve(factor, z.data(), m);
            p = z;
            for (index_t c = 0; c < m; ++c) rz[static_cast<std::size_t>(c)] = dot(r.data() + c * n, z.data() + c * n);
            restart = false;
        }
        bool all = true;
        for (index_t c = 0; c < m; ++c) {
            done[static_cast<std::size_t>(c)] = converged(c);
            all = all && done[static_cast<std::size_t>(c)];
        }
        if (all) {  // the recurrence says so: check the true residual
            if (!exact_norm) {
                anorm = damped_norm_inf(F, damping);
                exact_norm = true;
            }
            damped_residual(F, damping, G, x, r.data(), m);
            bool ok = true;
            for (index_t c = 0; c < m; ++c) ok = ok && converged(c);
            if (ok) return {it, true};
            restart = true;
        }
        if (it >= max_iter || (it >= 1 && hopeless(it))) return {it, false};
        if (restart) continue;
        // q = A p, through the residual of a zero right-hand side: q = -(0 - A p).
        damped_residual(F, damping, Z, p.data(), q.data(), m);
        for (index_t c = 0; c < m; ++c) {
            if (done[static_cast<std::size_t>(c)]) continue;
            double* pc = p.data() + c * n;
            double* qc = q.data() + c * n;
            const double pq = -dot(pc, qc);
            if (!(pq > 0)) return {it, false};  // the operator is not positive definite along p
            const double alpha = rz[static_cast<std::size_t>(c)] / pq;
            double* xc = x + c * n;
            double* rc = r.data() + c * n;
            for (index_t i = 0; i < n; ++i) {
                xc[i] += alpha * pc[i];
                rc[i] += alpha * qc[i];
            }
        }
        zold.swap(z);
        std::copy(r.begin(), r.end(), z.begin());
        mixed_factor_solve(factor, z.data(), m);
        for (index_t c = 0; c < m; ++c) {
            if (done[static_cast<std::size_t>(c)]) continue;
            const double* rc = r.data() + c * n;
            const double* zc = z.data() + c * n;
            const double* zo = zold.data() + c * n;
            // Polak-Ribiere: robust to the float32 preconditioner's rounding (flexible CG).
            double num = 0, rznew = 0;
            for (index_t i = 0; i < n; ++i) {
                num += rc[i] * (zc[i] - zo[i]);
                rznew += rc[i] * zc[i];
            }
            const double beta = std::max(0.0, num / rz[static_cast<std::size_t>(c)]);
            rz[static_cast<std::size_t>(c)] = rznew;
            double* pc = p.data() + c * n;
            for (index_t i = 0; i < n; ++i) pc[i] = zc[i] + beta * pc[i];
        }
    }
}

}  // namespace ngdfast
