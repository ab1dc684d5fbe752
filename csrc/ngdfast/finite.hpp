// Finiteness scans of caller arrays.
#pragma once

#include <exception>

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// Thrown by the solves from score rows J (lowrank_solve, the dense natural
// gradient, their mixed-precision forms) before any solve when the diagonal of
// their Gram product is not finite: J holds NaN/Inf, or the squares of a row
// overflow. They read J's finiteness off that diagonal (sum_p J(i, p)^2 or
// sum_i w_i J(i, p)^2) instead of a separate pass over J, which at N=256,
// P=16384 would cost ~8 % of a Woodbury solve.
class NonFiniteScores : public std::exception {
public:
    const char* what() const noexcept override {
        return "ngdfast: the Gram product of the score rows J has a non-finite diagonal";
    }
};

// Throws NonFiniteScores unless the n x n column-major Gram product at `gram`
// (leading dimension ld) has a finite diagonal.
template <class T>
void require_finite_diagonal(const T* gram, index_t n, index_t ld);

// True when no element is NaN or Inf.
template <class T>
bool all_finite(const T* data, index_t size);
template <class T>
bool all_finite(const Strided<T>& a);

}  // namespace ngdfast
