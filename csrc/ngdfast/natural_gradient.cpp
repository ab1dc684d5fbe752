#include "ngdfast/natural_gradient.hpp"

#include "ngdfast/cholesky.hpp"
#include "ngdfast/finite.hpp"
#include "ngdfast/fisher.hpp"

namespace ngdfast {

template <class T>
index_t natural_gradient_dense(const Strided<T>& J, const T* w, const Strided<T>& G, T damping, T* x) {
    const index_t P = J.cols;
    Matrix<T> f(P, P);  // the only P x P buffer: F, then its factor
    fisher<T>(J, w, f.data(), P, T(1), T(0), false);
    require_finite_diagonal(f.data(), P, P);
    return damped_solve_in_place<T>(f.data(), P, P, G, damping, x);
}

template index_t natural_gradient_dense<float>(const Strided<float>&, const float*, const Strided<float>&, float,
                                               float*);
template index_t natural_gradient_dense<double>(const Strided<double>&, const double*, const Strided<double>&,
                                                double, double*);

}  // namespace ngdfast
