#include "ngdfast/host_blas.hpp"

#include <dlfcn.h>
#include <pthread.h>
#include <time.h>

#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <mutex>

#include "ngdfast/fortran_blas.hpp"
#include "ngdfast/parallel.hpp"

namespace ngdfast {
namespace {

using lint = std::int64_t;  // NumPy's OpenBLAS is built with 64-bit integers

using threads_fn = int (*)();
threads_fn g_threads = nullptr;  // the host library's thread count, when it tells

fortran::Routines<lint> g_lib;  // gemm and syrk used
std::atomic<bool> g_loaded{false};
std::atomic<int> g_mode{static_cast<int>(BorrowMode::automatic)};
std::string g_path;
std::mutex g_mutex;

template <class T>
const fortran::Table<T, lint>& host_table() {
    return g_lib.of<T>();
}

// Below this the check's ~30 us would be a visible share of the call.
constexpr double kBorrowMinFlops = 2.0e7;

// fork() and the borrowed library. OpenBLAS's own fork handler (registered
// with pthread_atfork when the library loads, blas_thread_shutdown_) stops its
// worker threads and joins them; if a parallel OpenBLAS call from another
// thread is in flight at that moment a worker can miss the stop request and
// the join blocks forever: the parent hangs in fork(). Any thread calling
// NumPy's BLAS exposes a process to that (a NumPy J.T @ J thread does), but
// ngdfast's calls must not add to it. So every host call is counted in
// g_in_flight, and ngdfast's own prepare handler, registered after NumPy's
// OpenBLAS loaded (load_host_blas) and so run before OpenBLAS's (prepare
// handlers run in reverse order of registration), raises g_forking and waits
// until no ngdfast host call is in flight; a call about to start meanwhile
// waits until the fork is done. Each host call is a single BLAS call that
// takes no lock and never waits for the GIL, so the wait ends. The flags are
// a Dekker pair of sequentially consistent atomics: a call either sees
// g_forking or is seen in g_in_flight.
std::atomic<int> g_in_flight{0};
std::atomic<bool> g_forking{false};

// The end of the process closes the same gate, for good. exit()
// runs OpenBLAS's library destructor (gotoblas_quit) after every atexit
// handler; it stops and joins the library's workers, and a parallel call in
// flight from another thread at that moment can clear the stop request, so
// that the join, and the process, never end. Python's daemon threads may be
// inside an ngdfast kernel then, the GIL released. So an atexit handler
// (registered by load_host_blas, and so run before the library destructors)
// raises g_exiting and waits for ngdfast's host calls in flight; a call about
// to start afterwards waits until the process is gone.
std::atomic<bool> g_exiting{false};

void pause_briefly() {
    timespec ts{0, 100000};  // 0.1 ms
    nanosleep(&ts, nullptr);
}

struct HostCall {
    HostCall() {
        for (;;) {
            while (g_forking.load() || g_exiting.load()) pause_briefly();
            g_in_flight.fetch_add(1);
            if (!g_forking.load() && !g_exiting.load()) return;
            g_in_flight.fetch_sub(1);
        }
    }
    ~HostCall() { g_in_flight.fetch_sub(1); }
    HostCall(const HostCall&) = delete;
    HostCall& operator=(const HostCall&) = delete;
};

void fork_prepare() {
    g_forking.store(true);
    while (g_in_flight.load() != 0) pause_briefly();
}
void fork_parent() { g_forking.store(false); }
void fork_child() {
    g_in_flight.store(0);
    g_forking.store(false);
}

void close_at_exit() {
    g_exiting.store(true);
    while (g_in_flight.load() != 0) pause_briefly();
}

}  // namespace

bool load_host_blas(const std::string& path, const std::string& prefix, const std::string& suffix) {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_loaded) return true;
    // RTLD_NOLOAD: only the instance NumPy already loaded (same threads and
    // settings); never a second copy.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    if (!h) return false;
    const fortran::Routines<lint> lib = fortran::resolve<lint>(h, prefix, suffix);
    if (!lib.d.gemm || !lib.d.syrk || !lib.s.gemm || !lib.s.syrk) {
        dlclose(h);
        return false;
    }
    for (const char* name : {"openblas_get_num_threads64_", "openblas_get_num_threads_64_", "openblas_get_num_threads"})
        if (!g_threads) g_threads = reinterpret_cast<threads_fn>(dlsym(h, (prefix + name).c_str()));
    g_lib = lib;
    g_path = path;
    pthread_atfork(fork_prepare, fork_parent, fork_child);  // after the library's own: see fork_prepare
    std::atexit(close_at_exit);                             // before the library's destructor: see g_exiting
    g_loaded = true;  // the handle stays open for the life of the process
    return true;
}

std::string host_blas_path() { return g_loaded ? g_path : std::string(); }
int host_blas_threads() { return g_loaded && g_threads ? g_threads() : 0; }

void set_borrow_mode(BorrowMode mode) { g_mode = static_cast<int>(mode); }
BorrowMode borrow_mode() { return static_cast<BorrowMode>(g_mode.load()); }

namespace {
thread_local bool t_borrow_never = false;
}  // namespace

void set_thread_borrow_never(bool on) { t_borrow_never = on; }
bool thread_borrow_never() { return t_borrow_never; }

bool borrow_host_blas(double flops) {
    if (!g_loaded.load(std::memory_order_relaxed) || t_borrow_never) return false;
    switch (borrow_mode()) {
        case BorrowMode::never:
            return false;
        case BorrowMode::always:
            return true;
        case BorrowMode::automatic:
            break;
    }
    // A host limited to one thread (threadpoolctl) has no spinning workers to
    // put to use, and would run the product on one core.
    return flops >= kBorrowMinFlops && num_threads() > 1 && host_blas_threads() != 1 &&
           other_thread_running();
}

template <class T>
void host_syrk_lower(char trans, index_t n, index_t k, T alpha, const T* a, index_t lda, T beta, T* c, index_t ldc) {
    if (n <= 0) return;
    const char uplo = 'L';
    const lint ln = n, lk = k, la = lda, lc = ldc;
    HostCall in_flight;
    host_table<T>().syrk(&uplo, &trans, &ln, &lk, &alpha, a, &la, &beta, c, &lc, 1, 1);
}

template <class T>
void host_gemm(char transa, char transb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b,
               index_t ldb, T beta, T* c, index_t ldc) {
    if (m <= 0 || n <= 0) return;
    const lint lm = m, ln = n, lk = k, la = lda, lb = ldb, lc = ldc;
    HostCall in_flight;
    host_table<T>().gemm(&transa, &transb, &lm, &ln, &lk, &alpha, a, &la, b, &lb, &beta, c, &lc, 1, 1);
}

#define NGDFAST_INSTANTIATE(T)                                                                              \
    template void host_syrk_lower<T>(char, index_t, index_t, T, const T*, index_t, T, T*, index_t);       \
    template void host_gemm<T>(char, char, index_t, index_t, index_t, T, const T*, index_t, const T*, index_t, T, \
                               T*, index_t);
NGDFAST_INSTANTIATE(float)
NGDFAST_INSTANTIATE(double)
#undef NGDFAST_INSTANTIATE

}  // namespace ngdfast
