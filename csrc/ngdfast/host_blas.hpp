// NumPy's own BLAS, borrowed for the large products of calls made while
// another thread of this process is running.
//
// NumPy's OpenBLAS workers busy-wait for ~0.1 s after every NumPy BLAS call. A
// trainer calls ngdfast right after its NumPy model code, so ngdfast's worker
// would share a core with that spinner (measured: a Woodbury solve of N=256,
// P=9610 took 17 ms after NumPy calls against 10 ms alone, no faster than on
// one thread). Handing the dominant products to NumPy's OpenBLAS itself puts
// the spinning worker to use instead. The host library runs on its own
// threads (NumPy's setting, threadpoolctl limits included).
#pragma once

#include <string>

#include "ngdfast/blas.hpp"

namespace ngdfast {

enum class BorrowMode { never = 0, automatic = 1, always = 2 };

// Resolves {prefix}dsyrk{suffix} etc. (fortran_blas.hpp, 64-bit integers) in the
// already loaded library at `path`. Returns false, leaving nothing loaded,
// when a symbol is missing.
bool load_host_blas(const std::string& path, const std::string& prefix, const std::string& suffix);
std::string host_blas_path();
// The host library's current thread count, or 0 when unknown.
int host_blas_threads();

void set_borrow_mode(BorrowMode mode);
BorrowMode borrow_mode();

// Whether a call doing `flops` should run its dominant products on the host
// BLAS: never without one; always in mode `always`; in mode `automatic` when
// the work is large enough to pay for the check (reading /proc/self/task,
// ~30 us) and another thread of the process is running.
bool borrow_host_blas(double flops);

// Per calling thread: never borrow, whatever the mode (for callers whose other
// running threads are not NumPy's BLAS workers, e.g. torch's OpenMP team, which
// borrowing cannot put to work and NumPy's woken workers would then starve).
void set_thread_borrow_never(bool on);
bool thread_borrow_never();

// Lower triangle of C = alpha * op(A) op(A)^T + beta * C, as syrk_lower, on the
// host library's threads.
template <class T>
void host_syrk_lower(char trans, index_t n, index_t k, T alpha, const T* a, index_t lda, T beta, T* c, index_t ldc);

// C = alpha * op(A) op(B) + beta * C, as gemm, on the host library's threads.
template <class T>
void host_gemm(char transa, char transb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b,
               index_t ldb, T beta, T* c, index_t ldc);

}  // namespace ngdfast
