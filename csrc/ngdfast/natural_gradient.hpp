// The dense natural gradient: F formed once and factored in its own memory.
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// X = (J^T diag(w) J + damping I)^-1 G, J an N x P strided matrix, w the
// weights (N,) or nullptr for w_i = 1/N, G P x m; X P x m column-major. F's
// lower triangle is formed in the only P x P buffer, which is then factored in
// place. Returns 0 or the failing pivot; throws NonFiniteScores (finite.hpp)
// when F's diagonal, sum_i w_i J(i, p)^2, is not finite.
template <class T>
index_t natural_gradient_dense(const Strided<T>& J, const T* w, const Strided<T>& G, T damping, T* x);

}  // namespace ngdfast
