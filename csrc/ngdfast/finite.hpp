// Finiteness scans of caller arrays.
#pragma once

#include "ngdfast/matrix.hpp"

namespace ngdfast {

// True when no element is NaN or Inf.
template <class T>
bool all_finite(const T* data, index_t size);
template <class T>
bool all_finite(const Strided<T>& a);

}  // namespace ngdfast
