#include <cmath>

#include "bindings.hpp"
#include "ngdfast/finite.hpp"
#include "ngdfast/fisher.hpp"

namespace ngdfast::bindings {

NGDFAST_BIND(fisher) {
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
        [](const py::array& J, const py::object& w, const py::object& out, double alpha, double beta) {
            return dispatch(J, [&](auto tag) -> py::array {
                using T = decltype(tag);
                const Strided<T> j = view<T>(J, "J");
                const T* wp = weights<T>(w, j.rows);
                const bool fresh = out.is_none();
                py::array o;
                if (fresh) {
                    o = py::array_t<T>({static_cast<py::ssize_t>(j.cols), static_cast<py::ssize_t>(j.cols)});
                } else {
                    if (!py::isinstance<py::array_t<T>>(out)) throw std::invalid_argument("out: must be an array of J's dtype");
                    o = py::reinterpret_borrow<py::array>(out);
                    if (o.ndim() != 2 || o.shape(0) != j.cols || o.shape(1) != j.cols ||
                        !(o.flags() & (py::array::c_style | py::array::f_style)) || !o.writeable())
                        throw std::invalid_argument("out: must be a writeable contiguous (P, P) array of J's dtype");
                }
                T* op = static_cast<T*>(const_cast<void*>(o.data()));
                {
                    Released release;
                    fisher<T>(j, wp, op, j.cols, static_cast<T>(alpha), static_cast<T>(beta), true, fresh);
                }
                return o;
            });
        },
        py::arg("J"), py::arg("w"), py::arg("out") = py::none(), py::arg("alpha") = 1.0, py::arg("beta") = 0.0);
}

}  // namespace ngdfast::bindings
