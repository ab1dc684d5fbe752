#include <type_traits>

#include "bindings.hpp"
#include "ngdfast/lowrank.hpp"

namespace ngdfast::bindings {

NGDFAST_BIND(lowrank) {
    m.def(
        "lowrank_solve",
        [](const py::array& J, const py::object& w, const py::array& G, double damping) {
            if (!(damping > 0)) throw std::invalid_argument("lowrank_solve: damping must be > 0");
            return solve_from_scores("lowrank_solve", J, w, G, [&](const auto& j, const auto* wp, const auto& g, auto* x) {
                using T = std::remove_pointer_t<decltype(x)>;
                return lowrank_solve<T>(j, wp, g, static_cast<T>(damping), x);
            });
        },
        py::arg("J"), py::arg("w"), py::arg("G"), py::arg("damping"));
}

}  // namespace ngdfast::bindings
