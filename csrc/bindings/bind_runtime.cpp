#include <Eigen/Core>

#include "bindings.hpp"
#include "ngdfast/blas.hpp"
#include "ngdfast/checked.hpp"
#include "ngdfast/host_blas.hpp"
#include "ngdfast/parallel.hpp"
#include "ngdfast/tiles.hpp"

namespace ngdfast::bindings {

namespace {

const char* borrow_mode_name() {
    switch (borrow_mode()) {
        case BorrowMode::never:
            return "never";
        case BorrowMode::always:
            return "always";
        default:
            return "auto";
    }
}

py::list simd() {
    py::list out;
#ifdef __AVX512F__
    out.append("avx512f");
#endif
#ifdef __AVX2__
    out.append("avx2");
#endif
#ifdef __FMA__
    out.append("fma");
#endif
#ifdef __AVX__
    out.append("avx");
#endif
#ifdef __SSE4_2__
    out.append("sse4.2");
#endif
    return out;
}

// What the running CPU offers (the build may use less: see "simd").
py::list cpu_features() {
    py::list out;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) out.append("avx512f");
    if (__builtin_cpu_supports("avx2")) out.append("avx2");
    if (__builtin_cpu_supports("fma")) out.append("fma");
    if (__builtin_cpu_supports("avx")) out.append("avx");
    if (__builtin_cpu_supports("sse4.2")) out.append("sse4.2");
#endif
    return out;
}

// The fields of Tiles, in one place for both directions.
template <class F>
void for_tile_fields(Tiles& t, F&& f) {
    f("gram_split", t.gram_split);
    f("gram_panel", t.gram_panel);
    f("gram_rows", t.gram_rows);
    f("gram_square", t.gram_square);
    f("gram_depth", t.gram_depth);
    f("chol_panel", t.chol_panel);
    f("chol_rows", t.chol_rows);
}

bool is_double(const std::string& dtype) {
    if (dtype == "float64") return true;
    if (dtype == "float32") return false;
    throw std::invalid_argument("tiles: dtype must be 'float64' or 'float32', got '" + dtype + "'");
}

}  // namespace

NGDFAST_BIND(runtime) {
    m.def(
        "set_tiles",
        [](const std::string& dtype, const py::dict& values) {
            const bool dbl = is_double(dtype);
            Tiles t = dbl ? tiles<double>() : tiles<float>();
            std::size_t known = 0;
            for_tile_fields(t, [&](const char* name, index_t& field) {
                if (values.contains(name)) {
                    field = values[name].cast<index_t>();
                    ++known;
                }
            });
            if (known != values.size()) throw std::invalid_argument("set_tiles: unknown field in " + std::string(py::repr(values)));
            if (dbl)
                set_tiles<double>(t);
            else
                set_tiles<float>(t);
        },
        py::arg("dtype"), py::arg("values"),
        "Set the blocking of the kernels of one dtype (ngdfast._tiles): fields of Tiles (tiles.hpp), the others kept.");
    m.def("gram_deep", &gram_deep, py::arg("k"), py::arg("depth"),
          "Whether the Gram of a contraction of k runs in tall blocks under a BLAS pass depth of `depth` (tiles.hpp).");
    m.def(
        "get_tiles",
        [](const std::string& dtype) {
            Tiles t = is_double(dtype) ? tiles<double>() : tiles<float>();
            py::dict d;
            for_tile_fields(t, [&](const char* name, index_t& field) { d[name] = field; });
            return d;
        },
        py::arg("dtype"));
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def("get_num_threads", &num_threads);
    m.def("set_default_num_threads", &set_default_num_threads, py::arg("n"));
    m.def("blas_loaded", &blas_loaded);
    m.def("blas_active", &blas_active);
    m.def("load_blas", &load_blas, py::arg("path"), py::arg("prefix"));
    m.def("use_blas", &use_blas, py::arg("enabled"));
    m.def("load_host_blas", &load_host_blas, py::arg("path"), py::arg("prefix"), py::arg("suffix"));
    m.def(
        "set_borrow_mode",
        [](const std::string& mode) {
            if (mode == "never")
                set_borrow_mode(BorrowMode::never);
            else if (mode == "auto")
                set_borrow_mode(BorrowMode::automatic);
            else if (mode == "always")
                set_borrow_mode(BorrowMode::always);
            else
                throw std::invalid_argument("set_borrow_mode: mode must be 'never', 'auto' or 'always', got '" + mode +
                                            "'");
        },
        py::arg("mode"));
    m.def("get_borrow_mode", &borrow_mode_name);
    m.def("set_thread_borrow_never", &set_thread_borrow_never, py::arg("on"),
          "This thread's calls never borrow NumPy's BLAS (True) or follow the mode (False).");
    m.def("thread_borrow_never", &thread_borrow_never);
    m.def(
        "_checked_mul",
        [](index_t a, index_t b, std::size_t elem) { return checked_mul(a, b, elem); },
        py::arg("a"), py::arg("b"), py::arg("elem"), "Checked workspace size (tests only): a * b or MemoryError.");
    m.def("other_thread_running", [] {
        ReleasedGil release;
        return other_thread_running();
    });
    m.def("build_info", [] {
        py::dict d;
        d["compiler"] = NGDFAST_COMPILER;
        d["flags"] = NGDFAST_FLAGS;
        d["build_type"] = NGDFAST_BUILD_TYPE;
        d["native"] = bool(NGDFAST_NATIVE_BUILD);
        d["simd"] = simd();
        d["eigen"] = std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
                     std::to_string(EIGEN_MINOR_VERSION);
        d["eigen_simd"] = Eigen::SimdInstructionSetsInUse();
        d["tile_backend"] = blas_active() ? "blas" : "eigen";
        d["blas_path"] = blas_path();
        d["blas_note"] = blas_note();
        d["blas_corename"] = blas_corename();
        d["cpu"] = cpu_features();
        d["host_blas_path"] = host_blas_path();
        d["host_blas_threads"] = host_blas_threads();
        d["borrow_mode"] = borrow_mode_name();
        d["threads"] = num_threads();
        return d;
    });
}

}  // namespace ngdfast::bindings

// A C interface to the pool size, for threadpoolctl's controller
// (ngdfast/_threadpool.py), which finds this module among the loaded
// libraries by these symbols and calls them through ctypes. Plain C, no
// Python: threadpoolctl may call them from any thread.
extern "C" {

__attribute__((visibility("default"))) int ngdfast_get_num_threads(void) {
    try {
        return ngdfast::num_threads();
    } catch (...) {
        return -1;
    }
}

// Returns 0, or -1 when n is out of [1, 1024] or the pool cannot start.
__attribute__((visibility("default"))) int ngdfast_set_num_threads(int n) {
    if (n < 1 || n > 1024) return -1;
    try {
        ngdfast::set_num_threads(n);
        return 0;
    } catch (...) {
        return -1;
    }
}

}  // extern "C"
