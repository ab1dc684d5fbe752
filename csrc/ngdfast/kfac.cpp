#include "ngdfast/kfac.hpp"

#include "ngdfast/cholesky.hpp"

namespace ngdfast {

template <class T>
index_t kfac_precondition(const Strided<T>& grad, const Strided<T>& A, const Strided<T>& S, T damping_a,
                          T damping_s, T* x, char* factor) {
    const index_t n_out = grad.rows, n_in = grad.cols;
    Matrix<T> la(n_in, n_in), ls(n_out, n_out);
    copy_lower_shifted(A, damping_a, la.data(), n_in, false);
    index_t info = cholesky(la.data(), n_in, n_in);
    if (info != 0) {
        *factor = 'A';
        return info;
    }
    copy_lower_shifted(S, damping_s, ls.data(), n_out, false);
    info = cholesky(ls.data(), n_out, n_out);
    if (info != 0) {
        *factor = 'S';
        return info;
    }
    copy_to(grad, x, n_out);
    // S~^-1 grad, then (.) A~^-1 = (.) L_A^-T L_A^-1.
    cholesky_solve(ls.data(), n_out, n_out, x, n_in, n_out);
    trsm_lower<T>('R', 'T', n_out, n_in, la.data(), n_in, x, n_out);
    trsm_lower<T>('R', 'N', n_out, n_in, la.data(), n_in, x, n_out);
    *factor = 0;
    return 0;
}

template index_t kfac_precondition<float>(const Strided<float>&, const Strided<float>&, const Strided<float>&, float,
                                          float, float*, char*);
template index_t kfac_precondition<double>(const Strided<double>&, const Strided<double>&, const Strided<double>&,
                                           double, double, double*, char*);

}  // namespace ngdfast
