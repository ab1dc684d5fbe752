#include <cmath>

#include "bindings.hpp"
#include "ngdfast/finite.hpp"
#include "ngdfast/fisher.hpp"

namespace ngdfast::bindings {

void bind_fisher(py::module_& m) {
    m.def(
        "all_finite",
        [](const py::array& a) {
            if (a.size() == 0) return true;
            return dispatch(a, [&](auto tag) {
                using T = decltype(tag);
                if (a.ndim() == 0) return bool(std::isfinite(*static_cast<const T*>(a.data())));
                if (a.ndim() > 2) {
                    // Contiguous N-d arrays are flat; others are rare here.
                    if (!(a.flags() & (py::array::c_style | py::array::f_style)))
                        throw std::invalid_argument("all_finite: non-contiguous arrays of ndim > 2");
                    const T* p = static_cast<const T*>(a.data());
                    Released release;
                    return all_finite(p, static_cast<index_t>(a.size()));
                }
                const Strided<T> s = view<T>(a, "a");
                Released release;
                return all_finite(s);
            });
        },
        py::arg("a"));
    m.def(
        "fisher",
        [](const py::array& J, const py::object& w, const py::array& out, double alpha, double beta, bool fresh_out) {
            dispatch(J, [&](auto tag) {
                using T = decltype(tag);
                const Strided<T> j = view<T>(J, "J");
                const T* wp = weights<T>(w, j.rows);
                if (!py::isinstance<py::array_t<T>>(out) || out.ndim() != 2 || out.shape(0) != j.cols ||
                    out.shape(1) != j.cols || !(out.flags() & (py::array::c_style | py::array::f_style)) ||
                    !out.writeable())
                    throw std::invalid_argument("out: must be a writeable contiguous (P, P) array of J's dtype");
                T* o = static_cast<T*>(const_cast<void*>(out.data()));
                Released release;
                fisher<T>(j, wp, o, j.cols, static_cast<T>(alpha), static_cast<T>(beta), true, fresh_out);
            });
        },
        py::arg("J"), py::arg("w"), py::arg("out"), py::arg("alpha"), py::arg("beta"), py::arg("fresh_out") = false);
}

}  // namespace ngdfast::bindings
