#include "bindings.hpp"
#include "ngdfast/cholesky.hpp"

namespace ngdfast::bindings {

NGDFAST_BIND(cholesky) {
    m.def(
        "damped_solve",
        [](const py::array& F, const py::array& G, double damping) {
            return dispatch(F, [&](auto tag) -> py::tuple {
                using T = decltype(tag);
                auto solve = [&](const auto& f, const auto& g, T* xp) {
                    return damped_solve<T>(f, g, static_cast<T>(damping), xp);
                };
                auto [x, info] = call_with_square<T>("damped_solve", F, G, solve);
                return py::make_tuple(std::move(x), info);
            });
        },
        py::arg("F"), py::arg("G"), py::arg("damping"));
    m.def(
        "cholesky_factor",
        [](const py::array& F, double damping) {
            return dispatch(F, [&](auto tag) -> py::tuple {
                using T = decltype(tag);
                const Strided<T> f = view<T>(F, "F");
                if (f.rows != f.cols) throw std::invalid_argument("cholesky_factor: F must be square");
                auto l = new_matrix<T>(f.rows, f.rows);
                T* lp = l.mutable_data();
                index_t info;
                {
                    Released release;
                    info = cholesky_factor<T>(f, static_cast<T>(damping), lp);
                }
                return py::make_tuple(std::move(l), info);
            });
        },
        py::arg("F"), py::arg("damping"));
    m.def(
        "cholesky_solve",
        [](const py::array& L, const py::array& G) {
            return dispatch(L, [&](auto tag) -> py::array {
                using T = decltype(tag);
                const Strided<T> l = view<T>(L, "L");
                const Strided<T> g = view<T>(G, "G");
                if (l.rows != l.cols || l.rs != 1 || l.cs != l.rows || g.rows != l.rows)
                    throw std::invalid_argument("cholesky_solve: L must be a Fortran-ordered (P, P) factor, G (P, K)");
                auto x = new_matrix<T>(g.rows, g.cols);
                T* xp = x.mutable_data();
                {
                    Released release;
                    cholesky_solve<T>(l.data, l.rows, l.rows, g, xp);
                }
                return std::move(x);
            });
        },
        py::arg("L"), py::arg("G"));
}

}  // namespace ngdfast::bindings
