#include <type_traits>

#include "bindings.hpp"
#include "ngdfast/natural_gradient.hpp"

namespace ngdfast::bindings {

NGDFAST_BIND(natural_gradient) {
    m.def(
        "natural_gradient_dense",
        [](const py::array& J, const py::object& w, const py::array& G, double damping) {
            return solve_from_scores("natural_gradient_dense", J, w, G,
                                     [&](const auto& j, const auto* wp, const auto& g, auto* x) {
                                         using T = std::remove_pointer_t<decltype(x)>;
                                         return natural_gradient_dense<T>(j, wp, g, static_cast<T>(damping), x);
                                     });
        },
        py::arg("J"), py::arg("w"), py::arg("G"), py::arg("damping"));
}

}  // namespace ngdfast::bindings
