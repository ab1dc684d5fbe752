#include "bindings.hpp"
#include "ngdfast/lowrank.hpp"

namespace ngdfast::bindings {

void bind_lowrank(py::module_& m) {
    m.def(
        "lowrank_solve",
        [](const py::array& J, const py::object& w, const py::array& G, double damping) {
            return dispatch(J, [&](auto tag) -> py::tuple {
                using T = decltype(tag);
                const Strided<T> j = view<T>(J, "J");
                const Strided<T> g = view<T>(G, "G");
                const T* wp = weights<T>(w, j.rows);
                if (g.rows != j.cols) throw std::invalid_argument("lowrank_solve: G must be (P, K)");
                if (!(damping > 0)) throw std::invalid_argument("lowrank_solve: damping must be > 0");
                auto x = new_matrix<T>(g.rows, g.cols);
                T* xp = x.mutable_data();
                index_t info;
                {
                    py::gil_scoped_release release;
                    info = lowrank_solve<T>(j, wp, g, static_cast<T>(damping), xp);
                }
                return py::make_tuple(std::move(x), info);
            });
        },
        py::arg("J"), py::arg("w"), py::arg("G"), py::arg("damping"));
}

}  // namespace ngdfast::bindings
