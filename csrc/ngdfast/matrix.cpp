#include "ngdfast/matrix.hpp"

#include "ngdfast/parallel.hpp"

#include <algorithm>
#include <cstdlib>

namespace ngdfast {

template <class T>
Panel<T> make_panel(const Strided<T>& a, const T* row_scale) {
    Panel<T> p;
    const bool unit_cs = a.cs == 1 || a.cols == 1;
    const bool unit_rs = a.rs == 1 || a.rows == 1;
    if (!row_scale) {
        if (unit_cs && (a.rows == 1 || a.rs >= a.cols)) {
            p.data = a.data;
            p.ld = a.rows == 1 ? std::max<index_t>(a.cols, 1) : a.rs;
            p.row_major = true;
            return p;
        }
        if (unit_rs && (a.cols == 1 || a.cs >= a.rows)) {
            p.data = a.data;
            p.ld = a.cols == 1 ? std::max<index_t>(a.rows, 1) : a.cs;
            p.row_major = false;
            return p;
        }
    }
    // One copy: keep the memory order the source favours so the copy streams.
    const bool as_row_major = unit_cs || (!unit_rs && std::abs(a.cs) < std::abs(a.rs));
    p.store.resize(static_cast<std::size_t>(checked_mul(a.rows, a.cols, sizeof(T))));
    T* dst = p.store.data();
    if (as_row_major) {
        p.ld = std::max<index_t>(a.cols, 1);
        p.row_major = true;
        for (index_t i = 0; i < a.rows; ++i) {
            const T s = row_scale ? row_scale[i] : T(1);
            const T* src = a.data + i * a.rs;
            T* d = dst + i * a.cols;
            for (index_t j = 0; j < a.cols; ++j) d[j] = s * src[j * a.cs];
        }
    } else {
        p.ld = std::max<index_t>(a.rows, 1);
        p.row_major = false;
        for (index_t j = 0; j < a.cols; ++j) {
            const T* src = a.data + j * a.cs;
            T* d = dst + j * a.rows;
            if (row_scale)
                for (index_t i = 0; i < a.rows; ++i) d[i] = row_scale[i] * src[i * a.rs];
            else
                for (index_t i = 0; i < a.rows; ++i) d[i] = src[i * a.rs];
        }
    }
    p.data = dst;
    return p;
}

namespace {

// Copies the block rows [i0, i1) x cols [j0, j1) restricted to i >= j - lower_only*inf.
template <class T>
void copy_block(const Strided<T>& src, T* dst, index_t ldd, index_t i0, index_t i1, index_t j0, index_t j1,
                bool lower) {
    if (src.rs == 1) {  // columns contiguous: straight column copies
        for (index_t j = j0; j < j1; ++j) {
            const index_t ib = lower ? std::max(i0, j) : i0;
            const T* s = src.data + j * src.cs;
            T* d = dst + j * ldd;
            for (index_t i = ib; i < i1; ++i) d[i] = s[i];
        }
        return;
    }
    constexpr index_t kb = 32;
    for (index_t ib = i0; ib < i1; ib += kb) {
        const index_t ie = std::min(i1, ib + kb);
        for (index_t jb = j0; jb < j1; jb += kb) {
            const index_t je = std::min(j1, jb + kb);
            if (lower && jb > ie - 1) continue;
            for (index_t i = ib; i < ie; ++i) {
                const T* s = src.data + i * src.rs;
                const index_t jend = lower ? std::min(je, i + 1) : je;
                for (index_t j = jb; j < jend; ++j) dst[i + j * ldd] = s[j * src.cs];
            }
        }
    }
}

}  // namespace

template <class T>
void copy_to(const Strided<T>& src, T* dst, index_t ldd) {
    copy_block(src, dst, ldd, 0, src.rows, 0, src.cols, false);
}

template <class T>
void copy_lower_shifted(const Strided<T>& src, T shift, T* dst, index_t ldd, bool parallel) {
    const index_t n = src.rows;
    constexpr index_t cb = 128;
    const index_t n_blocks = (n + cb - 1) / cb;
    Team team(parallel);
    team.run(n_blocks, [&](std::ptrdiff_t b, int) {
        const index_t j0 = b * cb, j1 = std::min(n, j0 + cb);
        copy_block(src, dst, ldd, j0, n, j0, j1, true);
        for (index_t j = j0; j < j1; ++j) dst[j + j * ldd] += shift;
    });
}

template void copy_to<float>(const Strided<float>&, float*, index_t);
template void copy_to<double>(const Strided<double>&, double*, index_t);
template void copy_lower_shifted<float>(const Strided<float>&, float, float*, index_t, bool);
template void copy_lower_shifted<double>(const Strided<double>&, double, double*, index_t, bool);
template Panel<float> make_panel<float>(const Strided<float>&, const float*);
template Panel<double> make_panel<double>(const Strided<double>&, const double*);

}  // namespace ngdfast
