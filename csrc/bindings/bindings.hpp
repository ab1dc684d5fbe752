// Shared pieces of the pybind11 layer: array -> view conversion, dtype
// dispatch, GIL release with Ctrl-C polling, and the registration of each
// area's bindings (NGDFAST_BIND). Arguments arrive validated by
// ngdfast._kernels; checks here guard the C++ from misuse of the private
// module, not users. No algorithm lives here or in the bind_*.cpp files.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <unistd.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ngdfast/matrix.hpp"
#include "ngdfast/parallel.hpp"

namespace ngdfast::bindings {

namespace py = pybind11;

// The main thread's id: only there does Python run signal handlers.
inline unsigned long& main_thread_id() {
    static unsigned long id = 0;
    return id;
}

// Taking the GIL back at the end of the interpreter. A thread that asks for
// the GIL after Python's finalisation has begun on another thread never gets
// it: CPython (3.8 to 3.13) ends it on the spot with pthread_exit(), which
// unwinds its stack as a "forced unwind" exception, and py::gil_scoped_release
// asks from its destructor, which is noexcept: std::terminate ("terminate
// called without an active exception"), SIGABRT, the whole process dies.
// NumPy's C code unwinds without a noexcept frame in the way.
// Here the thread is parked instead, as CPython 3.14 itself does: the forced
// unwind is caught right where it starts and the thread sleeps until the
// process ends. It holds no lock of Python's or ours at that point (the
// kernel returned; CPython released its GIL mutex before exiting the thread),
// and letting the unwind go on is no option: the binding's locals would
// touch Python objects without the GIL. Asking (rather than checking
// Py_IsFinalizing() first) is exact: the finalising thread itself, a __del__
// or an atexit handler calling a kernel, gets the GIL back as usual.
[[noreturn]] inline void park_thread() noexcept {
    for (;;) pause();
}

// catch (...) rather than abi::__forced_unwind&: a forced unwind carries no
// exception object to bind a reference to (UBSan reports the null binding),
// and nothing else can leave this C function.
inline void take_gil_back(PyThreadState* state) noexcept {
    try {
        PyEval_RestoreThread(state);
    } catch (...) {
        park_thread();  // never returns: ending the handler would resume the unwind
    }
}

// The thread state this thread gave up with the GIL (ReleasedGil), for the
// signal poll to take it back.
inline thread_local PyThreadState* t_released_state = nullptr;

// The GIL released for a kernel call: py::gil_scoped_release's job, with
// take_gil_back at the end.
class ReleasedGil {
public:
    ReleasedGil() : state_(PyEval_SaveThread()), outer_(t_released_state) { t_released_state = state_; }
    ~ReleasedGil() {
        t_released_state = outer_;
        take_gil_back(state_);
    }
    ReleasedGil(const ReleasedGil&) = delete;
    ReleasedGil& operator=(const ReleasedGil&) = delete;

private:
    PyThreadState* state_;
    PyThreadState* outer_;
};

// Ctrl-C during a long call: the poll of the kernel's InterruptScope (see
// parallel.hpp) takes the GIL back for a moment and runs Python's pending
// signal handlers; when one raises (KeyboardInterrupt from the default SIGINT
// handler, or whatever a user's handler raises) the exception stays set on
// this thread and the call unwinds with ngdfast::Interrupted, which the
// translator in module.cpp turns back into that exception. No signal handler
// is installed or replaced. Polls happen at most every 0.1 s and only on the
// main thread; with no other Python thread running, taking the free GIL costs
// about a microsecond. The GIL is taken as at the end of the call (a main
// thread polling while another thread finalises is parked, not unwound
// through the pool's catch-all handlers).
inline bool poll_python_signals() {
    take_gil_back(t_released_state);
    const bool raised = PyErr_CheckSignals() != 0;
    PyEval_SaveThread();
    return raised;
}

// Used instead of py::gil_scoped_release around every kernel call.
class __attribute__((visibility("hidden"))) Released {
public:
    Released() {
        if (PyThread_get_thread_ident() == main_thread_id()) scope_.emplace(poll_python_signals, 0.1);
    }

private:
    std::optional<InterruptScope> scope_;  // destroyed after the GIL is back
    ReleasedGil release_;
};

// NumPy type numbers through pybind11's public dtype API (a read of the
// descriptor, no Python attribute lookup: small calls must stay cheap).
inline int type_num(const py::array& a) { return a.dtype().num(); }
template <class T>
int type_num_of() {
    static const int num = py::dtype::of<T>().num();
    return num;
}

// Element-stride view of a 1-D or 2-D array (1-D counts as a column). The
// array must outlive the view: callers keep the py::array in scope.
template <class T>
Strided<T> view(const py::array& a, const char* name) {
    if (type_num(a) != type_num_of<T>())
        throw std::invalid_argument(std::string(name) + ": dtype does not match the other arguments");
    if (a.ndim() < 1 || a.ndim() > 2) throw std::invalid_argument(std::string(name) + ": must be 1-D or 2-D");
    const auto item = static_cast<py::ssize_t>(sizeof(T));
    for (py::ssize_t d = 0; d < a.ndim(); ++d)
        if (a.strides(d) % item != 0) throw std::invalid_argument(std::string(name) + ": misaligned strides");
    Strided<T> s;
    s.data = static_cast<const T*>(a.data());
    s.rows = a.shape(0);
    s.rs = a.strides(0) / item;
    if (a.ndim() == 2) {
        s.cols = a.shape(1);
        s.cs = a.strides(1) / item;
    } else {
        s.cols = 1;
        s.cs = s.rows;
    }
    return s;
}

// Optional contiguous weights of length n.
template <class T>
const T* weights(const py::object& w, index_t n) {
    if (w.is_none()) return nullptr;
    auto arr = py::cast<py::array>(w);
    if (type_num(arr) != type_num_of<T>() || arr.ndim() != 1 || arr.shape(0) != n ||
        !(arr.flags() & py::array::c_style))
        throw std::invalid_argument("w: must be a contiguous (N,) array of the data dtype");
    return static_cast<const T*>(arr.data());
}

// Fresh Fortran-ordered (rows, cols) array.
template <class T>
py::array_t<T, py::array::f_style> new_matrix(index_t rows, index_t cols) {
    return py::array_t<T, py::array::f_style>({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(cols)});
}

// Calls f(T{}) for the dtype of `a` (float32 or float64).
template <class F>
auto dispatch(const py::array& a, F&& f) {
    const int num = type_num(a);
    if (num == type_num_of<double>()) return f(double{});
    if (num == type_num_of<float>()) return f(float{});
    throw py::type_error("unsupported dtype " + std::string(py::str(a.dtype())) + ": expected float32 or float64");
}

// A solve from score rows: views of J (N, P), optional weights (N,) and
// right-hand sides G (P, K) of dtype T, a fresh X (P, K), and solve(j, w, g, x)
// called with the GIL released (Released: Ctrl-C polls). Returns (X, what
// solve returned).
template <class T, class Solve>
auto call_with_scores(const char* name, const py::array& J, const py::object& w, const py::array& G, Solve&& solve) {
    const Strided<T> j = view<T>(J, "J");
    const Strided<T> g = view<T>(G, "G");
    const T* wp = weights<T>(w, j.rows);
    if (g.rows != j.cols) throw std::invalid_argument(std::string(name) + ": G must be (P, K)");
    auto x = new_matrix<T>(g.rows, g.cols);
    T* xp = x.mutable_data();
    decltype(solve(j, wp, g, xp)) result{};
    {
        Released release;
        result = solve(j, wp, g, xp);
    }
    return std::make_pair(std::move(x), result);
}

// A solve of a square system: views of F (P, P) and G (P, K) of dtype T, a
// fresh X (P, K), and solve(f, g, x) called with the GIL released. Returns
// (X, what solve returned).
template <class T, class Solve>
auto call_with_square(const char* name, const py::array& F, const py::array& G, Solve&& solve) {
    const Strided<T> f = view<T>(F, "F");
    const Strided<T> g = view<T>(G, "G");
    if (f.rows != f.cols || g.rows != f.rows)
        throw std::invalid_argument(std::string(name) + ": F must be (P, P) and G (P, K)");
    auto x = new_matrix<T>(g.rows, g.cols);
    T* xp = x.mutable_data();
    decltype(solve(f, g, xp)) result{};
    {
        Released release;
        result = solve(f, g, xp);
    }
    return std::make_pair(std::move(x), result);
}

// The binding of a float32/float64 solve from score rows returning its info:
// (X, info).
template <class Solve>
py::tuple solve_from_scores(const char* name, const py::array& J, const py::object& w, const py::array& G,
                            Solve&& solve) {
    return dispatch(J, [&](auto tag) -> py::tuple {
        auto [x, info] = call_with_scores<decltype(tag)>(name, J, w, G, solve);
        return py::make_tuple(std::move(x), info);
    });
}

// Registration. Each bind_<area>.cpp defines its bindings as
//
//     NGDFAST_BIND(area) {
//         m.def(...);
//     }
//
// which adds them to binders() while the module's shared library loads
// (static initialisation, in an order nobody controls); PYBIND11_MODULE in
// module.cpp then runs them sorted by area name, so the module comes out the
// same whatever the link order. A new area is one new file here (and its line
// in CMakeLists.txt); nothing else to edit.
using Binder = void (*)(py::module_&);
struct BinderEntry {
    const char* area;
    Binder bind;
};
inline std::vector<BinderEntry>& binders() {
    static std::vector<BinderEntry> all;  // built on first use: safe from other files' static initialisers
    return all;
}
struct RegisterBinder {
    RegisterBinder(const char* area, Binder bind) { binders().push_back({area, bind}); }
};

#define NGDFAST_BIND(area)                                                                                \
    static void ngdfast_bind_##area(::pybind11::module_& m);                                              \
    static const ::ngdfast::bindings::RegisterBinder ngdfast_register_##area(#area, &ngdfast_bind_##area); \
    static void ngdfast_bind_##area(::pybind11::module_& m)

}  // namespace ngdfast::bindings
