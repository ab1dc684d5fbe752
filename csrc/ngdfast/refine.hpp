// Mixed-precision solves for float64 data, and the reuse of an old factor.
//
// The float32 blocked Cholesky runs at about twice the float64 rate. A float64
// system (F + lam I) x = g is factored in float32, after a symmetric diagonal
// scaling D (F + lam I) D with unit diagonal (so no entry can leave float32's
// range, whatever the scale of F and lam), and the answer is refined with
// float64 residuals r = g - (F + lam I) x, as LAPACK's dsposv does, until
//   ||r||_inf <= ||x||_inf * ||F + lam I||_inf * eps64 * sqrt(n)      (dsposv's test)
// or the correction is below float64 rounding (||dx||_inf <= eps64 ||x||_inf).
// Refinement converges at a rate of about cond * eps32; when it stalls (a
// correction more than half the previous one), diverges, or the float32
// factorisation fails, the float64 factorisation runs instead and the result
// says so.
//
// The same float32 factor of an older matrix serves as the preconditioner of
// conjugate gradients on the new one (pcg_solve): the optimizer's EMA changes
// F little from one step to the next.
#pragma once

#include <vector>

#include "ngdfast/matrix.hpp"

namespace ngdfast {

enum class MixedStatus : int {
    converged = 0,      // mixed precision, refined to float64 accuracy
    factor_failed = 1,  // the float32 factorisation failed: float64 path taken
    stalled = 2,        // refinement stalled or diverged: float64 path taken
    not_tried = 3,      // float64 path without trying (not float64 data, or asked for)
};

struct MixedResult {
    index_t info = 0;  // the float64 solve's: 0 or a failing pivot
    int iterations = 0;  // refinement steps (corrections after the first solve)
    MixedStatus status = MixedStatus::converged;
};

// At most this many refinement steps (dsposv's ITERMAX).
constexpr int kMaxRefinements = 30;

// X = (F + damping I)^-1 G, F read from its lower triangle; X n x m column-major.
MixedResult damped_solve_mixed(const Strided<double>& F, const Strided<double>& G, double damping, double* x);

// The dense natural gradient: F = J^T diag(w) J formed in float64 (the residuals
// read it), then as damped_solve_mixed. Throws NonFiniteScores (finite.hpp)
// when F's diagonal is not finite.
MixedResult natural_gradient_dense_mixed(const Strided<double>& J, const double* w, const Strided<double>& G,
                                         double damping, double* x);

// The Woodbury solve with the N x N Gram K = Jd Jd^T + lam I formed and factored
// in float32 from a float32 copy of Jd = diag(sqrt(w)) J; the sample-space
// system K u = Jd g is refined with float64 residuals, each one pass over J
// (K u = Jd (Jd^T u) + lam u), then x = (g - Jd^T u) / lam in float64. A
// non-finite J takes the float64 path, which throws NonFiniteScores.
MixedResult lowrank_solve_mixed(const Strided<double>& J, const double* w, const Strided<double>& G, double damping,
                                double* x);

// Float32 Cholesky factor of D (F + damping I) D, D = diag(scale), with
// ||F + damping I||_inf. `info` != 0: the factorisation failed (or a diagonal
// entry of F + damping I is not > 0).
struct MixedFactor {
    index_t n = 0;
    Matrix<float> l;
    std::vector<double> scale;
    double norm_inf = 0;
    index_t info = 0;
};
MixedFactor mixed_factor(const Strided<double>& F, double damping);

// R <- (F + damping I)^-1 R approximately, through the float32 factor; R n x m
// column-major with leading dimension n.
void mixed_factor_solve(const MixedFactor& f, double* r, index_t m);

// R = G - (F + damping I) X, F read from its lower triangle, in float64; X, R
// n x m column-major with leading dimension n. The sum order is fixed by the
// sizes alone: bitwise reproducible for any thread count.
void damped_residual(const Strided<double>& F, double damping, const Strided<double>& G, const double* x, double* r,
                     index_t m);

// ||F + damping I||_inf from F's lower triangle.
double damped_norm_inf(const Strided<double>& F, double damping);

// Preconditioned conjugate gradients on A X = G, A = F + damping I,
// preconditioned by `factor` (of an older matrix, or of A itself when
// factor_of_F), from X = factor^-1 G, column by column in lockstep, until every
// column's normwise backward error eta = ||r||_inf / (||A||_inf ||x||_inf) is at
// most tol (checked on the true residual, with ||A||_inf computed then; the
// factor's norm stands in before, and is exact when factor_of_F). Given up, X then holding the last iterate,
// after max_iter iterations, or as soon as the observed rate predicts that
// max_iter cannot suffice: after k iterations with eta_k = rho^k eta_0,
// k + log(tol / eta_k) / log(rho) > max_iter (2 max_iter after the first
// iteration, whose rate is the least reliable). CG on a slowly drifting F
// converges at a steady rate, so an attempt that cannot succeed usually costs
// two or three products with F instead of max_iter.
struct PcgResult {
    int iterations = 0;  // iterations run (matrix products after the first)
    bool converged = false;
};
PcgResult pcg_solve(const Strided<double>& F, double damping, const MixedFactor& factor, const Strided<double>& G,
                    double tol, int max_iter, double* x, bool factor_of_F = false);

}  // namespace ngdfast
