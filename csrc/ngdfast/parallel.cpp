#include "ngdfast/parallel.hpp"

#include <cstdlib>
#include <memory>
#include <stdexcept>

namespace ngdfast {

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    workers_.reserve(static_cast<std::size_t>(n_threads_ - 1));
    for (int slot = 1; slot < n_threads_; ++slot) workers_.emplace_back([this, slot] { worker_loop(slot); });
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
    std::unique_lock<std::mutex> owner(busy_, std::try_to_lock);
    if (!owner.owns_lock() || n_threads_ == 1 || n_tasks == 1) {
        for (std::ptrdiff_t t = 0; t < n_tasks; ++t) body(t, 0);
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
        for (std::ptrdiff_t t = next_.fetch_add(1); t < n_tasks; t = next_.fetch_add(1)) body(t, 0);
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

int default_threads() {
    if (const char* env = std::getenv("NGDFAST_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        int n = std::atoi(env);
        if (n > 0) return n;
    }
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

std::mutex g_pool_mutex;
std::shared_ptr<ThreadPool> g_pool;

std::shared_ptr<ThreadPool> pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (!g_pool) g_pool = std::make_shared<ThreadPool>(default_threads());
    return g_pool;
}

}  // namespace

int num_threads() { return pool()->size(); }

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
        for (std::ptrdiff_t t = 0; t < n_tasks; ++t) body(t, 0);
        return;
    }
    pool_->run(n_tasks, body);
}

}  // namespace ngdfast
