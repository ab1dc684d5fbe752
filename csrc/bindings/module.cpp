#include "bindings.hpp"
#include "ngdfast/finite.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "ngdfast compiled kernels (low level; use the ngdfast package functions)";
    using namespace ngdfast::bindings;
    main_thread_id() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    // A call interrupted by a Python signal handler's exception: that
    // exception is already set (see poll_python_signals).
    py::register_exception_translator([](std::exception_ptr p) {
        if (!p) return;
        try {
            std::rethrow_exception(p);
        } catch (const ngdfast::Interrupted&) {
            if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        }
    });
    // The solves from score rows found J non-finite (finite.hpp); internal:
    // ngdfast._kernels turns it into the public error.
    py::register_exception<ngdfast::NonFiniteScores>(m, "NonFiniteScores", PyExc_ValueError);
    bind_runtime(m);
    bind_fisher(m);
    bind_cholesky(m);
    bind_lowrank(m);
    bind_kfac(m);
    bind_refine(m);
}
