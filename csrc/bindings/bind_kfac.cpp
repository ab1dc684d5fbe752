#include "bindings.hpp"
#include "ngdfast/kfac.hpp"

namespace ngdfast::bindings {

NGDFAST_BIND(kfac) {
    m.def(
        "kfac_precondition",
        [](const py::array& grad, const py::array& A, const py::array& S, double damping_a, double damping_s) {
            return dispatch(grad, [&](auto tag) -> py::tuple {
                using T = decltype(tag);
                const Strided<T> g = view<T>(grad, "grad");
                const Strided<T> a = view<T>(A, "A");
                const Strided<T> s = view<T>(S, "S");
                if (a.rows != g.cols || a.cols != g.cols || s.rows != g.rows || s.cols != g.rows)
                    throw std::invalid_argument("kfac_precondition: need grad (out, in), A (in, in), S (out, out)");
                auto x = new_matrix<T>(g.rows, g.cols);
                T* xp = x.mutable_data();
                char factor = 0;
                index_t info;
                {
                    Released release;
                    info = kfac_precondition<T>(g, a, s, static_cast<T>(damping_a), static_cast<T>(damping_s), xp,
                                                &factor);
                }
                return py::make_tuple(std::move(x), info, factor ? std::string(1, factor) : std::string());
            });
        },
        py::arg("grad"), py::arg("A"), py::arg("S"), py::arg("damping_a"), py::arg("damping_s"));
}

}  // namespace ngdfast::bindings
