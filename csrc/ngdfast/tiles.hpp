// How the blocked kernels cut their work into tile products: chosen at run
// time for the tile engine in use, never fixed at build time. ngdfast/_tiles.py
// derives one set per scalar type from the loaded OpenBLAS's core type (its GEMM
// blocking) and the CPU's caches, and sets it here at import and whenever the
// engine changes. A kernel call reads its set once, at its start, so a set
// changed meanwhile never mixes into a running call.
#pragma once

#include "ngdfast/blas.hpp"

namespace ngdfast {

struct Tiles {
    // The Gram X X^T (gram.cpp) of an n x n output over a contraction of k.
    index_t gram_split = 384;   // n at most this: split the contraction, one n x n buffer per chunk
    index_t gram_panel = 384;   // tall blocks: width of a column panel of the output
    index_t gram_rows = 2048;   // tall blocks: tallest block of a panel computed by one product
    index_t gram_square = 256;  // square tiles: side (a tile kept in L2 while the BLAS updates it)
    // The BLAS's GEMM pass depth (OpenBLAS's GEMM_Q): it updates C once per
    // pass over the contraction. Tall blocks (a block buffer larger than the
    // caches) when the passes of a contraction of k are at least 3/4 as deep
    // as this (gram_deep), square tiles otherwise.
    index_t gram_depth = 256;
    // The blocked Cholesky (cholesky.cpp): panel width (the inner dimension of
    // every update GEMM) and the row chunk of the update and solve tasks.
    index_t chol_panel = 192;
    index_t chol_rows = 512;
};

// The set in use for scalar type T (float or double).
template <class T>
Tiles tiles();

// Replaces the set of T; every field must be at least 8 and gram_rows at least
// gram_panel (std::invalid_argument otherwise, nothing changed).
template <class T>
void set_tiles(const Tiles& t);

// Whether the OpenBLAS-style passes over a contraction of k, each at most
// `depth` deep (k <= depth: one pass of k; depth < k < 2 depth: two of k/2;
// else passes of depth), are at least 3/4 of `depth` deep.
bool gram_deep(index_t k, index_t depth);

}  // namespace ngdfast
