// K-FAC preconditioning of one layer: X = S~^-1 grad A~^-1.
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// grad (out x in), A (in x in), S (out x out), lower triangles read.
// X (out x in, column-major) = (S + damping_s I)^-1 grad (A + damping_a I)^-1.
// Returns 0, or the failing pivot with *factor set to 'A' or 'S'.
template <class T>
index_t kfac_precondition(const Strided<T>& grad, const Strided<T>& A, const Strided<T>& S, T damping_a,
                          T damping_s, T* x, char* factor);

}  // namespace ngdfast
