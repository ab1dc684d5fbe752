#include "ngdfast/parallel.hpp"

#include <dirent.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace ngdfast {
namespace {

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

thread_local InterruptScope* t_scope = nullptr;

// Incremented in every child of fork(): a pool created before it has no
// workers there (only the forking thread survives a fork).
std::atomic<unsigned long> g_fork_generation{0};

long this_tid() { return static_cast<long>(syscall(SYS_gettid)); }

// Kernel thread ids of every ngdfast worker alive (all pools: a replaced pool
// lives on while a run() holds it). Never destroyed, like the pool (see
// g_pool): a kernel still running on a daemon thread while exit() runs the
// static destructors reads it (other_thread_running).
std::mutex g_tids_mutex;  // trivially destructible
std::vector<long>& g_worker_tids = *new std::vector<long>;

void register_worker(long tid, bool alive) {
    std::lock_guard<std::mutex> lock(g_tids_mutex);
    if (alive)
        g_worker_tids.push_back(tid);
    else
        g_worker_tids.erase(std::remove(g_worker_tids.begin(), g_worker_tids.end(), tid), g_worker_tids.end());
}

}  // namespace

InterruptScope::InterruptScope(Poll poll, double interval_s)
    : poll_(poll),
      interval_ns_(static_cast<std::int64_t>(interval_s * 1e9)),
      next_ns_(now_ns() + interval_ns_),
      outer_(t_scope) {
    t_scope = this;
}

InterruptScope::~InterruptScope() { t_scope = outer_; }

void interruption_point() {
    InterruptScope* s = t_scope;
    if (!s) return;
    const std::int64_t now = now_ns();
    if (now < s->next_ns_) return;
    const bool stop = s->poll_();
    s->next_ns_ = now_ns() + s->interval_ns_;
    if (stop) throw Interrupted();
}

bool other_thread_running() {
    DIR* dir = opendir("/proc/self/task");
    if (!dir) return false;
    const long me = this_tid();
    std::vector<long> ours;
    {
        std::lock_guard<std::mutex> lock(g_tids_mutex);
        ours = g_worker_tids;
    }
    // Reading a stat file costs a few microseconds: past the first 64 threads
    // the answer is "no" (the pool is the safe default) rather than a scan of
    // a millisecond.
    constexpr int kMaxScanned = 64;
    int scanned = 0;
    bool running = false;
    while (dirent* entry = readdir(dir)) {
        if (++scanned > kMaxScanned + 2) {  // + "." and ".."
            running = false;
            break;
        }
        char* end = nullptr;
        const long tid = std::strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != '\0' || tid == me) continue;
        if (std::find(ours.begin(), ours.end(), tid) != ours.end()) continue;
        char path[64], buf[512];
        std::snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
        FILE* f = std::fopen(path, "r");
        if (!f) continue;  // the thread ended meanwhile
        const std::size_t got = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[got] = '\0';
        // "tid (comm) S ...": the state follows the last ')' (comm may hold any byte).
        const char* close = std::strrchr(buf, ')');
        if (close && close[1] == ' ' && close[2] == 'R') {
            running = true;
            break;
        }
    }
    closedir(dir);
    return running;
}

ThreadPool::ThreadPool(int n_threads)
    : n_threads_(n_threads < 1 ? 1 : n_threads), fork_generation_(g_fork_generation.load()) {
    workers_.reserve(static_cast<std::size_t>(n_threads_ - 1));
    for (int slot = 1; slot < n_threads_; ++slot) workers_.emplace_back([this, slot] { worker_loop(slot); });
    // Workers are known by thread id before the pool is used, so that
    // other_thread_running() never takes a starting worker for a foreign thread.
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [&] { return started_ == n_threads_ - 1; });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(m_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int slot) {
    struct Registered {
        long tid = this_tid();
        Registered() { register_worker(tid, true); }
        ~Registered() { register_worker(tid, false); }
    } registered;
    {
        std::lock_guard<std::mutex> lock(m_);
        ++started_;
    }
    done_.notify_all();
    unsigned long seen = 0;
    for (;;) {
        const std::function<void(std::ptrdiff_t, int)>* body;
        std::ptrdiff_t n_tasks;
        {
            std::unique_lock<std::mutex> lock(m_);
            wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            // A worker waking after its run() already returned finds no body.
            body = body_;
            n_tasks = n_tasks_;
            if (!body) continue;
            ++active_;
        }
        try {
            for (std::ptrdiff_t t = next_.fetch_add(1); t < n_tasks; t = next_.fetch_add(1)) (*body)(t, slot);
        } catch (...) {
            std::lock_guard<std::mutex> lock(m_);
            if (!error_) error_ = std::current_exception();
            next_.store(n_tasks);
        }
        {
            std::lock_guard<std::mutex> lock(m_);
            --active_;
        }
        done_.notify_all();
    }
}

void ThreadPool::run(std::ptrdiff_t n_tasks, const std::function<void(std::ptrdiff_t, int)>& body) {
    if (n_tasks <= 0) return;
    // In a child of fork() this pool's workers do not exist, and its mutexes
    // may have been held by threads that do not either: serial, untouched.
    if (fork_generation_ != g_fork_generation.load(std::memory_order_relaxed)) {
        for (std::ptrdiff_t t = 0; t < n_tasks; ++t) {
            body(t, 0);
            interruption_point();
        }
        return;
    }
    std::unique_lock<std::mutex> owner(busy_, std::try_to_lock);
    if (!owner.owns_lock() || n_threads_ == 1 || n_tasks == 1) {
        for (std::ptrdiff_t t = 0; t < n_tasks; ++t) {
            body(t, 0);
            interruption_point();
        }
        return;
    }
    {
        std::lock_guard<std::mutex> lock(m_);
        body_ = &body;
        n_tasks_ = n_tasks;
        next_.store(0);
        error_ = nullptr;
        ++generation_;
    }
    wake_.notify_all();
    std::exception_ptr mine;
    try {
        for (std::ptrdiff_t t = next_.fetch_add(1); t < n_tasks; t = next_.fetch_add(1)) {
            body(t, 0);
            interruption_point();  // throws Interrupted: the rest is skipped below
        }
    } catch (...) {
        mine = std::current_exception();
        next_.store(n_tasks);
    }
    std::unique_lock<std::mutex> lock(m_);
    // Workers that never woke for this generation must not pick up a stale
    // body later: exhausting next_ guarantees they find no task.
    done_.wait(lock, [&] { return active_ == 0 && next_.load() >= n_tasks_; });
    body_ = nullptr;
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
}

namespace {

// The size of the pool when it is first created. The environment
// (NGDFAST_NUM_THREADS, OMP_NUM_THREADS) is read once, by the Python settings
// module, which passes the count here: the core reads no variable itself.
std::atomic<int> g_default_threads{0};

int default_threads() {
    if (int n = g_default_threads.load(); n > 0) return n;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// The pool in use, never destroyed: deliberately leaked, like the workers'
// ids above. At the end of the process a static std::shared_ptr would be
// destroyed by exit() while Python's daemon threads may still be inside a
// kernel, their GIL released (CPython stops them only when they ask for the
// GIL back): the destructor would join workers in the middle of another
// thread's run(), or free a pool that a call in flight then finds through
// num_threads() or a new Team. Left alone, the workers sleep on their
// condition variable until the process ends, as OpenBLAS's do. A pool
// replaced by set_num_threads is destroyed (its workers joined) when its last
// run() returns.
std::mutex g_pool_mutex;  // trivially destructible
std::shared_ptr<ThreadPool>& g_pool = *new std::shared_ptr<ThreadPool>;

// fork() while other threads run ngdfast: the child has only the forking
// thread. Prepare takes the two global locks so that the child gets them in a
// consistent state (neither is held across anything that waits for another
// thread of ours, nor for the GIL); the child then abandons the pool, whose
// workers are gone: it is leaked, never destroyed (its destructor would join
// threads that do not exist), its run() turns serial through the fork
// generation, and the next kernel call creates a fresh pool lazily.
void fork_prepare() {
    g_pool_mutex.lock();
    g_tids_mutex.lock();
}
void fork_parent() {
    g_tids_mutex.unlock();
    g_pool_mutex.unlock();
}
void fork_child() {
    g_fork_generation.fetch_add(1);
    if (g_pool) new std::shared_ptr<ThreadPool>(std::move(g_pool));  // leaked on purpose
    g_worker_tids.clear();
    g_tids_mutex.unlock();
    g_pool_mutex.unlock();
}
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(fork_prepare, fork_parent, fork_child);

std::shared_ptr<ThreadPool> pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool) g_pool = std::make_shared<ThreadPool>(default_threads());
    return g_pool;
}

}  // namespace

int num_threads() { return pool()->size(); }

void set_default_num_threads(int n) { g_default_threads = n < 1 ? 0 : n; }

void set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
    auto fresh = std::make_shared<ThreadPool>(n);
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_pool = std::move(fresh);  // a run() in flight keeps the old pool alive
}

Team::Team(bool parallel) {
    if (parallel) pool_ = pool();
}

void Team::run(std::ptrdiff_t n_tasks, const std::function<void(std::ptrdiff_t, int)>& body) const {
    if (!pool_) {
        for (std::ptrdiff_t t = 0; t < n_tasks; ++t) {
            body(t, 0);
            interruption_point();
        }
        return;
    }
    pool_->run(n_tasks, body);
}

}  // namespace ngdfast
