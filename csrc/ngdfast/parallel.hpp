// A small fork-join thread pool whose idle workers sleep on a condition
// variable. Sleeping (not spinning) matters: trainers alternate NumPy's
// OpenBLAS calls with ours every step, and spinning workers would steal the
// cores NumPy's threads need (measured in bench/test_bench_threads.py).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace ngdfast {

// Below this many flops a kernel stays on the calling thread: waking a worker
// costs tens of microseconds.
constexpr double kParallelFlops = 4.0e6;

// Below this many elements a pass over a matrix that does O(1) work per
// element (copies, scans, norms) stays on the calling thread.
constexpr double kParallelElements = 1.0e6;

// Cancellation of long calls, with no Python in the core. The thread making
// a kernel call may install an InterruptScope with a poll function; between
// tasks (blocks, panels, chunks) ThreadPool::run and Team::run call
// interruption_point() on that thread, which calls poll at most once per
// `interval_s` (a clock read otherwise) and, when poll answers true, throws
// Interrupted: the remaining tasks are skipped, the workers finish the task
// they hold, and the call unwinds (its workspaces are RAII-owned). Workers
// never poll. The bindings' poll checks Python's pending signals.
class Interrupted : public std::exception {
public:
    const char* what() const noexcept override { return "ngdfast: call interrupted"; }
};

class InterruptScope {
public:
    using Poll = bool (*)();
    InterruptScope(Poll poll, double interval_s);
    ~InterruptScope();
    InterruptScope(const InterruptScope&) = delete;
    InterruptScope& operator=(const InterruptScope&) = delete;

private:
    friend void interruption_point();
    Poll poll_;
    std::int64_t interval_ns_, next_ns_;
    InterruptScope* outer_;
};

// Throws Interrupted when the calling thread's scope (if any) says so.
void interruption_point();

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Runs body(task, slot) for task in [0, n_tasks), tasks handed out
    // dynamically; slot in [0, size()) identifies the executing thread so
    // callers can index per-thread scratch. The caller takes part. When the
    // pool is busy with another caller (several Python threads at once) the
    // tasks run serially on the calling thread with slot 0 of a private range,
    // so concurrent calls never wait on each other and never deadlock.
    void run(std::ptrdiff_t n_tasks, const std::function<void(std::ptrdiff_t, int)>& body);

private:
    void worker_loop(int slot);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex busy_;  // held by the caller owning the pool for one run()
    std::mutex m_;
    std::condition_variable wake_;
    std::condition_variable done_;
    const std::function<void(std::ptrdiff_t, int)>* body_ = nullptr;
    std::ptrdiff_t n_tasks_ = 0;
    std::atomic<std::ptrdiff_t> next_{0};
    int active_ = 0;
    int started_ = 0;  // workers that have registered their thread id
    unsigned long generation_ = 0;
    unsigned long fork_generation_;  // g_fork_generation at creation: workers exist in this process
    bool stop_ = false;
    std::exception_ptr error_;
};

// True when a thread of this process other than the caller and ngdfast's own
// workers is running or runnable (state R in /proc/self/task/*/stat): e.g.
// NumPy's OpenBLAS workers, which busy-wait for ~0.1 s after each NumPy call.
// False where /proc is unavailable; only the first 64 threads listed are
// looked at (a process with hundreds of threads is not scanned for a
// millisecond). Costs ~30 us.
bool other_thread_running();

// Process-wide pool size used by all kernels.
int num_threads();
void set_num_threads(int n);
// The size the pool gets when first used (n < 1: the hardware's thread
// count); creates no thread.
void set_default_num_threads(int n);

// The threads one kernel call works with: the global pool when `parallel`,
// else just the caller (small problems: waking a worker costs more than it
// saves). Holding the pool keeps it alive across a concurrent
// set_num_threads. Slots index per-call scratch: 0 <= slot < slots().
class Team {
public:
    explicit Team(bool parallel);
    int slots() const { return pool_ ? pool_->size() : 1; }
    void run(std::ptrdiff_t n_tasks, const std::function<void(std::ptrdiff_t, int)>& body) const;

private:
    std::shared_ptr<ThreadPool> pool_;
};

}  // namespace ngdfast
