#include "ngdfast/blas.hpp"
#include "ngdfast/checked.hpp"
#include "ngdfast/fortran_blas.hpp"

#include <dlfcn.h>
#include <time.h>

#include <Eigen/Dense>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <mutex>

namespace ngdfast {
namespace {

// scipy-openblas32: the Fortran ABI with 32-bit integers.
using fint = int;
fortran::Routines<fint> g_lib;
std::atomic<bool> g_loaded{false};
std::atomic<bool> g_enabled{false};
std::string g_path;
std::string g_note;      // why no library is loaded, when one was offered
std::string g_corename;  // the kernels the library chose for this CPU at run time
std::mutex g_load_mutex;

template <class T>
const fortran::Table<T, fint>& table() {
    return g_lib.of<T>();
}

// The end of the process. exit() runs the library's destructor
// (gotoblas_quit) after every atexit handler, and it unmaps the buffers the
// library's routines work in: a tile call still running on a Python daemon
// thread's kernel then crashes (SIGSEGV in dpotrf). So every call into the
// library is counted, and an atexit handler (registered by load_blas) closes
// the gate and waits for the calls in flight, each one short and
// single-threaded; a call about to start afterwards waits for the process
// to end. The same gate guards NumPy's BLAS (host_blas.cpp).
std::atomic<int> g_in_flight{0};
std::atomic<bool> g_exiting{false};

void pause_briefly() {
    timespec ts{0, 100000};  // 0.1 ms
    nanosleep(&ts, nullptr);
}

struct TileCall {
    TileCall() {
        for (;;) {
            while (g_exiting.load()) pause_briefly();
            g_in_flight.fetch_add(1);
            if (!g_exiting.load()) return;
            g_in_flight.fetch_sub(1);
        }
    }
    ~TileCall() { g_in_flight.fetch_sub(1); }
    TileCall(const TileCall&) = delete;
    TileCall& operator=(const TileCall&) = delete;
};

void close_at_exit() {
    g_exiting.store(true);
    while (g_in_flight.load() != 0) pause_briefly();
}

// Small products stay on Eigen: an external call's fixed cost (argument
// checks, buffer allocation) exceeds the work below ~64^3 multiply-adds.
constexpr double kExternalMinWork = 64.0 * 64.0 * 64.0;

using set_threads_fn = void (*)(int);
using get_threads_fn = int (*)();
set_threads_fn g_set_threads = nullptr;
get_threads_fn g_get_threads = nullptr;

// The external library takes 32-bit dimensions and leading dimensions;
// a call with any of them larger stays on Eigen (64-bit indices).
bool use_external(double work, std::initializer_list<index_t> dims) {
    if (!(work >= kExternalMinWork && g_enabled.load(std::memory_order_relaxed) && fits_int32(dims))) return false;
    // threadpoolctl lists the private copy as a BLAS like any other, and
    // threadpool_limits(n) sets it to n threads: put it back to one (a global
    // read per tile; the setter runs only after such a change).
    if (g_get_threads && g_set_threads && g_get_threads() != 1) g_set_threads(1);
    return true;
}

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class T>
using MapC = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using MapM = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;

}  // namespace

bool load_blas(const std::string& path, const std::string& prefix) {
    std::lock_guard<std::mutex> lock(g_load_mutex);
    if (g_loaded) return true;
    // A copy someone else already loaded (e.g. by importing the
    // scipy_openblas32 package, which dlopens it RTLD_GLOBAL so that later
    // extension modules bind to it) may be serving other libraries: its
    // thread count is not ours to change, so its tiles are not used.
    if (void* other = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
        dlclose(other);
        g_note = "not used: " + path + " was already loaded by another component of the process";
        return false;
    }
    // RTLD_LOCAL: its symbols (scipy_dgemm_ ...) stay invisible to every
    // extension module loaded later, so nobody else binds to this
    // single-threaded copy.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char* err = dlerror();
        g_note = std::string("not used: ") + (err ? err : "dlopen failed");
        return false;
    }
    auto sym = [&](const char* name) { return dlsym(h, (prefix + name).c_str()); };
    const fortran::Routines<fint> lib = fortran::resolve<fint>(h, prefix, "_");
    const auto& d = lib.d;
    const auto& s = lib.s;
    if (!d.gemm || !d.syrk || !d.trsm || !d.potrf || !s.gemm || !s.syrk || !s.trsm || !s.potrf) {
        dlclose(h);
        g_note = "not used: " + path + " lacks a {" + prefix + "}gemm_/syrk_/trsm_/potrf_ symbol";
        return false;
    }
    // All parallelism is ours; the library's own pool would spin beside it.
    for (const char* name : {"openblas_set_num_threads", "goto_set_num_threads"}) {
        if (auto f = reinterpret_cast<set_threads_fn>(sym(name))) {
            g_set_threads = f;
            f(1);
            break;
        }
    }
    g_get_threads = reinterpret_cast<get_threads_fn>(sym("openblas_get_num_threads"));
    using name_fn = const char* (*)();
    if (auto f = reinterpret_cast<name_fn>(sym("openblas_get_corename"))) g_corename = f() ? f() : "";
    g_lib = lib;
    g_path = path;
    std::atexit(close_at_exit);  // before the library's destructor: see g_exiting
    g_loaded = true;
    g_enabled = true;
    return true;
}

void use_blas(bool enabled) { g_enabled = enabled && g_loaded.load(); }
bool blas_active() { return g_enabled.load(); }
bool blas_loaded() { return g_loaded.load(); }
std::string blas_path() { return g_loaded ? g_path : std::string(); }
std::string blas_corename() { return g_loaded ? g_corename : std::string(); }
std::string blas_note() {
    std::lock_guard<std::mutex> lock(g_load_mutex);
    return g_note;
}

template <class T>
void gemm(char transa, char transb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b,
          index_t ldb, T beta, T* c, index_t ldc) {
    if (m <= 0 || n <= 0) return;
    if (use_external(double(m) * double(n) * double(k), {m, n, k, lda, ldb, ldc})) {
        fint fm = static_cast<fint>(m), fn = static_cast<fint>(n), fk = static_cast<fint>(k);
        fint la = static_cast<fint>(lda), lb = static_cast<fint>(ldb), lc = static_cast<fint>(ldc);
        TileCall in_flight;
        table<T>().gemm(&transa, &transb, &fm, &fn, &fk, &alpha, a, &la, b, &lb, &beta, c, &lc, 1, 1);
        return;
    }
    MapM<T> C(c, m, n, Eigen::OuterStride<>(ldc));
    if (beta == T(0))
        C.setZero();
    else if (beta != T(1))
        C *= beta;
    if (k <= 0) return;
    const index_t ar = transa == 'N' ? m : k, ac = transa == 'N' ? k : m;
    const index_t br = transb == 'N' ? k : n, bc = transb == 'N' ? n : k;
    MapC<T> A(a, ar, ac, Eigen::OuterStride<>(lda));
    MapC<T> B(b, br, bc, Eigen::OuterStride<>(ldb));
    if (transa == 'N' && transb == 'N')
        C.noalias() += alpha * A * B;
    else if (transa == 'N')
        C.noalias() += alpha * A * B.transpose();
    else if (transb == 'N')
        C.noalias() += alpha * A.transpose() * B;
    else
        C.noalias() += alpha * A.transpose() * B.transpose();
}

template <class T>
void syrk_lower(char trans, index_t n, index_t k, T alpha, const T* a, index_t lda, T beta, T* c, index_t ldc) {
    if (n <= 0) return;
    if (use_external(0.5 * double(n) * double(n) * double(k), {n, k, lda, ldc})) {
        const char uplo = 'L';
        fint fn = static_cast<fint>(n), fk = static_cast<fint>(k), la = static_cast<fint>(lda),
             lc = static_cast<fint>(ldc);
        TileCall in_flight;
        table<T>().syrk(&uplo, &trans, &fn, &fk, &alpha, a, &la, &beta, c, &lc, 1, 1);
        return;
    }
    MapM<T> C(c, n, n, Eigen::OuterStride<>(ldc));
    if (beta == T(0))
        C.template triangularView<Eigen::Lower>().setZero();
    else if (beta != T(1))
        C.template triangularView<Eigen::Lower>() *= beta;
    if (k <= 0) return;
    if (trans == 'N') {
        MapC<T> A(a, n, k, Eigen::OuterStride<>(lda));
        C.template selfadjointView<Eigen::Lower>().rankUpdate(A, alpha);
    } else {
        MapC<T> A(a, k, n, Eigen::OuterStride<>(lda));
        C.template selfadjointView<Eigen::Lower>().rankUpdate(A.transpose(), alpha);
    }
}

template <class T>
void trsm_lower(char side, char trans, index_t m, index_t n, const T* l, index_t ldl, T* b, index_t ldb) {
    if (m <= 0 || n <= 0) return;
    if (use_external(0.5 * double(m) * double(n) * double(side == 'L' ? m : n), {m, n, ldl, ldb})) {
        const char uplo = 'L', diag = 'N';
        const T one = 1;
        fint fm = static_cast<fint>(m), fn = static_cast<fint>(n), ll = static_cast<fint>(ldl),
             lb = static_cast<fint>(ldb);
        TileCall in_flight;
        table<T>().trsm(&side, &uplo, &trans, &diag, &fm, &fn, &one, l, &ll, b, &lb, 1, 1, 1, 1);
        return;
    }
    MapM<T> B(b, m, n, Eigen::OuterStride<>(ldb));
    const index_t nl = side == 'L' ? m : n;
    MapC<T> L(l, nl, nl, Eigen::OuterStride<>(ldl));
    if (side == 'L') {
        if (trans == 'N')
            L.template triangularView<Eigen::Lower>().solveInPlace(B);
        else
            L.transpose().template triangularView<Eigen::Upper>().solveInPlace(B);
    } else {
        // B L^-T: solve X L^T = B  <=>  L X^T = B^T.
        auto Bt = B.transpose();
        if (trans == 'T')
            L.template triangularView<Eigen::Lower>().solveInPlace(Bt);
        else
            L.transpose().template triangularView<Eigen::Upper>().solveInPlace(Bt);
    }
}

template <class T>
index_t potrf_lower(index_t n, T* a, index_t lda) {
    if (n <= 0) return 0;
    if (use_external(double(n) * double(n) * double(n) / 3.0, {n, lda})) {
        const char uplo = 'L';
        fint fn = static_cast<fint>(n), la = static_cast<fint>(lda), info = 0;
        TileCall in_flight;
        table<T>().potrf(&uplo, &fn, a, &la, &info, 1);
        if (info != 0) return info;
        // OpenBLAS's potrf lets a NaN pivot through; LAPACK's contract does not.
        for (index_t j = 0; j < n; ++j)
            if (!(a[j + j * lda] > T(0))) return j + 1;
        return 0;
    }
    // Left-looking column Cholesky on the block; blocks are small (<= 256).
    MapM<T> A(a, n, n, Eigen::OuterStride<>(lda));
    for (index_t j = 0; j < n; ++j) {
        T d = A(j, j);
        if (j > 0) d -= A.row(j).head(j).squaredNorm();
        if (!(d > T(0))) return j + 1;
        d = std::sqrt(d);
        A(j, j) = d;
        const index_t r = n - j - 1;
        if (r > 0) {
            if (j > 0) A.col(j).tail(r).noalias() -= A.bottomLeftCorner(r, j) * A.row(j).head(j).transpose();
            A.col(j).tail(r) /= d;
        }
    }
    return 0;
}

#define NGDFAST_INSTANTIATE(T)                                                                                    \
    template void gemm<T>(char, char, index_t, index_t, index_t, T, const T*, index_t, const T*, index_t, T, T*, \
                          index_t);                                                                               \
    template void syrk_lower<T>(char, index_t, index_t, T, const T*, index_t, T, T*, index_t);                    \
    template void trsm_lower<T>(char, char, index_t, index_t, const T*, index_t, T*, index_t);                    \
    template index_t potrf_lower<T>(index_t, T*, index_t);
NGDFAST_INSTANTIATE(float)
NGDFAST_INSTANTIATE(double)
#undef NGDFAST_INSTANTIATE

}  // namespace ngdfast
