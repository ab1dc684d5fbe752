// The Fortran ABI of the BLAS/LAPACK routines ngdfast calls, written once for
// both libraries it may use: scipy-openblas32 (32-bit integers, its private
// tile library, blas.cpp) and NumPy's OpenBLAS (64-bit integers, borrowed for
// large products, host_blas.cpp). Hidden string lengths are passed for
// compilers that expect them.
#pragma once

#include <dlfcn.h>

#include <cstddef>
#include <string>
#include <type_traits>

namespace ngdfast::fortran {

template <class T, class I>
using gemm_fn = void (*)(const char*, const char*, const I*, const I*, const I*, const T*, const T*, const I*,
                         const T*, const I*, const T*, T*, const I*, std::size_t, std::size_t);
template <class T, class I>
using syrk_fn = void (*)(const char*, const char*, const I*, const I*, const T*, const T*, const I*, const T*, T*,
                         const I*, std::size_t, std::size_t);
template <class T, class I>
using trsm_fn = void (*)(const char*, const char*, const char*, const char*, const I*, const I*, const T*, const T*,
                         const I*, T*, const I*, std::size_t, std::size_t, std::size_t, std::size_t);
template <class T, class I>
using potrf_fn = void (*)(const char*, const I*, T*, const I*, I*, std::size_t);

// One scalar type's routines; a null pointer where the library lacks one.
template <class T, class I>
struct Table {
    gemm_fn<T, I> gemm = nullptr;
    syrk_fn<T, I> syrk = nullptr;
    trsm_fn<T, I> trsm = nullptr;
    potrf_fn<T, I> potrf = nullptr;
};

// The float64 and float32 tables of one library with integer type I.
template <class I>
struct Routines {
    Table<double, I> d;
    Table<float, I> s;

    template <class T>
    const Table<T, I>& of() const {
        if constexpr (std::is_same_v<T, double>)
            return d;
        else
            return s;
    }
};

namespace detail {
template <class T, class I>
Table<T, I> resolve_table(void* handle, const std::string& prefix, const std::string& suffix) {
    const char x = std::is_same_v<T, double> ? 'd' : 's';
    auto sym = [&](const char* name) { return dlsym(handle, (prefix + x + name + suffix).c_str()); };
    return {reinterpret_cast<gemm_fn<T, I>>(sym("gemm")), reinterpret_cast<syrk_fn<T, I>>(sym("syrk")),
            reinterpret_cast<trsm_fn<T, I>>(sym("trsm")), reinterpret_cast<potrf_fn<T, I>>(sym("potrf"))};
}
}  // namespace detail

// {prefix}dgemm{suffix}, {prefix}sgemm{suffix}, ... syrk, trsm, potrf in the
// library opened as `handle`.
template <class I>
Routines<I> resolve(void* handle, const std::string& prefix, const std::string& suffix) {
    return {detail::resolve_table<double, I>(handle, prefix, suffix), detail::resolve_table<float, I>(handle, prefix, suffix)};
}

}  // namespace ngdfast::fortran
