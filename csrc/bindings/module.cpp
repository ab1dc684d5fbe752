#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "ngdfast/finite.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "ngdfast compiled kernels (low level; use the ngdfast package functions)";
    using namespace ngdfast::bindings;
    main_thread_id() = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
    // pybind11 looks NumPy's C API up on first use (so do our dtype numbers),
    // and gives the GIL up and takes it back around that one-time lookup with
    // py::gil_scoped_release, whose destructor is noexcept: a daemon thread
    // whose first call met the interpreter's finalisation there aborted the
    // process (see take_gil_back in bindings.hpp). Done here, by
    // the importing thread, no kernel call does it later.
    type_num_of<float>();
    type_num_of<double>();
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
    // The areas' bindings (bindings.hpp, NGDFAST_BIND), in a fixed order.
    std::vector<BinderEntry> areas = binders();
    std::sort(areas.begin(), areas.end(),
              [](const BinderEntry& a, const BinderEntry& b) { return std::strcmp(a.area, b.area) < 0; });
    for (std::size_t i = 1; i < areas.size(); ++i)
        if (std::strcmp(areas[i - 1].area, areas[i].area) == 0)
            throw std::logic_error(std::string("ngdfast._core: two NGDFAST_BIND(") + areas[i].area + ")");
    for (const BinderEntry& area : areas) area.bind(m);
}
