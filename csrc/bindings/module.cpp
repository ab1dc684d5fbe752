#include "bindings.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "ngdfast compiled kernels (low level; use the ngdfast package functions)";
    using namespace ngdfast::bindings;
    bind_runtime(m);
    bind_fisher(m);
    bind_cholesky(m);
    bind_lowrank(m);
    bind_kfac(m);
    bind_refine(m);
}
