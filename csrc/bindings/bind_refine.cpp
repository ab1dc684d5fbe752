#include <memory>
#include <string>

#include "bindings.hpp"
#include "ngdfast/refine.hpp"

namespace ngdfast::bindings {

namespace {

void require_double(const py::array& a, const char* func) {
    if (type_num(a) != type_num_of<double>()) throw py::type_error(std::string(func) + ": float64 data only");
}

py::tuple mixed_result(py::array x, const MixedResult& r) {
    return py::make_tuple(std::move(x), r.info, static_cast<int>(r.status), r.iterations);
}

// (X, info, status, iterations) of a float64 solve from score rows.
template <class Solve>
py::tuple mixed_from_scores(const char* func, const py::array& J, const py::object& w, const py::array& G,
                            Solve&& solve) {
    require_double(J, func);
    auto [x, r] = call_with_scores<double>(func, J, w, G, solve);
    return mixed_result(std::move(x), r);
}

}  // namespace

NGDFAST_BIND(refine) {
    m.def(
        "damped_solve_mixed",
        [](const py::array& F, const py::array& G, double damping) {
            require_double(F, "damped_solve_mixed");
            auto solve = [&](const auto& f, const auto& g, double* xp) { return damped_solve_mixed(f, g, damping, xp); };
            auto [x, r] = call_with_square<double>("damped_solve_mixed", F, G, solve);
            return mixed_result(std::move(x), r);
        },
        py::arg("F"), py::arg("G"), py::arg("damping"));
    m.def(
        "natural_gradient_dense_mixed",
        [](const py::array& J, const py::object& w, const py::array& G, double damping) {
            return mixed_from_scores("natural_gradient_dense_mixed", J, w, G,
                                     [&](const auto& j, const double* wp, const auto& g, double* x) {
                                         return natural_gradient_dense_mixed(j, wp, g, damping, x);
                                     });
        },
        py::arg("J"), py::arg("w"), py::arg("G"), py::arg("damping"));
    m.def(
        "lowrank_solve_mixed",
        [](const py::array& J, const py::object& w, const py::array& G, double damping) {
            if (!(damping > 0)) throw std::invalid_argument("lowrank_solve_mixed: damping must be > 0");
            return mixed_from_scores("lowrank_solve_mixed", J, w, G,
                                     [&](const auto& j, const double* wp, const auto& g, double* x) {
                                         return lowrank_solve_mixed(j, wp, g, damping, x);
                                     });
        },
        py::arg("J"), py::arg("w"), py::arg("G"), py::arg("damping"));

    py::class_<MixedFactor, std::shared_ptr<MixedFactor>>(
        m, "MixedFactor", "Float32 Cholesky factor of D (F + damping I) D (opaque; see ngdfast.curvature)")
        .def_property_readonly("n", [](const MixedFactor& f) { return f.n; })
        .def_property_readonly("nbytes", [](const MixedFactor& f) {
            return static_cast<py::ssize_t>(f.n * f.n * sizeof(float) + f.n * sizeof(double));
        });
    m.def(
        "mixed_factor",
        [](const py::array& F, double damping) {
            require_double(F, "mixed_factor");
            const Strided<double> f = view<double>(F, "F");
            if (f.rows != f.cols) throw std::invalid_argument("mixed_factor: F must be square");
            auto fac = std::make_shared<MixedFactor>();
            {
                Released release;
                *fac = mixed_factor(f, damping);
            }
            const index_t info = fac->info;
            return py::make_tuple(std::move(fac), info);
        },
        py::arg("F"), py::arg("damping"));
    m.def(
        "pcg_solve",
        [](const py::array& F, double damping, const MixedFactor& factor, const py::array& G, double tol,
           int max_iter, bool factor_of_F) {
            require_double(F, "pcg_solve");
            if (F.ndim() != 2 || factor.n != F.shape(0) || factor.info != 0)
                throw std::invalid_argument("pcg_solve: a valid factor of the size of F expected");
            auto solve = [&](const auto& f, const auto& g, double* xp) {
                return pcg_solve(f, damping, factor, g, tol, max_iter, xp, factor_of_F);
            };
            auto [x, res] = call_with_square<double>("pcg_solve", F, G, solve);
            return py::make_tuple(std::move(x), res.iterations, res.converged);
        },
        py::arg("F"), py::arg("damping"), py::arg("factor"), py::arg("G"), py::arg("tol"), py::arg("max_iter"),
        py::arg("factor_of_F") = false);
}

}  // namespace ngdfast::bindings
