// Fisher accumulation F = J^T diag(w) J on the Gram engine (gram.hpp).
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// out = beta * out + alpha * J^T diag(w) J, J an N x P strided matrix, w the
// weights (N,) or nullptr for w_i = 1/N. out is P x P with leading dimension
// ldo (C or Fortran order alike: both triangles get the same formula).
// With `fresh_out` (memory just allocated, never written) the pages of out are
// first faulted in by the whole team: page faults taken one by one inside the
// tile stores measured ~35 ms for a 128 MiB result, a third of the compute.
template <class T>
void fisher(const Strided<T>& J, const T* w, T* out, index_t ldo, T alpha, T beta, bool write_upper = true,
            bool fresh_out = false);

}  // namespace ngdfast
