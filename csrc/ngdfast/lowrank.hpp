// Sample-space (Woodbury) solve: never forms anything of size P x P.
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// X = (J^T diag(w) J + damping I)^-1 G with damping > 0, through
//   (F + lam I)^-1 g = (g - Jd^T (Jd Jd^T + lam I)^-1 Jd g) / lam,  Jd = diag(sqrt(w)) J,
// an N x N Cholesky. w is (N,) summing to 1, or nullptr for 1/N. X is P x m
// column-major. Returns 0 or the failing pivot of the N x N system; throws
// NonFiniteScores (finite.hpp) when the diagonal of J J^T is not finite.
template <class T>
index_t lowrank_solve(const Strided<T>& J, const T* w, const Strided<T>& G, T damping, T* x);

}  // namespace ngdfast
