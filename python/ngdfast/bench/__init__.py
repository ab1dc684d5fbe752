r"""Time the compiled kernels beside NumPy and SciPy: ``python -m ngdfast bench``.

For every kernel and size the table shows

- ``time``: the median over ``--repeats`` samples, after one warm-up call
  (calls of a few microseconds are repeated inside each sample so that one
  sample lasts at least a millisecond);
- ``GFLOP/s``: the kernel's useful work divided by that time, with the flop
  counts below (2 flops per multiply-add, whatever an implementation does);
- ``of GEMM``: that rate as a fraction of the machine's matrix-multiply rate,
  measured at start as NumPy ``A @ B`` with n = 2048 and counted as
  :math:`2n^3` (float32 cases are compared with the float32 rate);
- ``vs peers``: peer time / ngdfast time for every peer timed in the same
  process (> 1 means ngdfast is faster), each in a block of its own after a
  short pause (:mod:`ngdfast.bench.timing`);
- ``max err``: the largest relative difference
  :math:`\|x - x_\text{peer}\|_F / \|x_\text{peer}\|_F` between ngdfast's
  answer and a peer's; every answer is checked, and the exit status is 1 when
  one disagrees beyond the dtype's tolerance (:data:`ngdfast.bench.peers.TOLERANCE`).

Flop counts (N samples, P parameters, K right-hand sides, K-FAC factors of
size a (inputs + bias) and s (outputs)):

==================  =====================================================
fisher              :math:`N P^2` (one triangle of :math:`J^T J`)
damped_solve        :math:`P^3/3 + 2P^2K`
lowrank_solve       :math:`N^2 P + N^3/3 + 4NPK`
natural_gradient    the cheaper of fisher + damped_solve and lowrank_solve
kfac_precondition   :math:`(a^3 + s^3)/3 + 2as(a + s)`
kl_step_size        :math:`2P`
==================  =====================================================

After the table come the alternating experiment (NumPy BLAS work and a kernel
call every step, :mod:`ngdfast.bench.interference`), the factor-reuse
experiment (:mod:`ngdfast.bench.reuse`) and the speed targets of the cases
that ran (:mod:`ngdfast.bench.targets`); ``--kernels torch`` adds
``ngdfast.torch`` beside the torch libraries (:mod:`ngdfast.bench.torch`, the
only module that imports torch, and only then).

``--race`` runs the race instead (:mod:`ngdfast.bench.race`): wall time to
tuned AdamW's final loss on the digits CNN and the character GPT, ngdfast beside
the optimizers torch users pick.

Modules, one job each: ``timing`` (how a call is timed), ``peers`` (the
hand-written peers, relative errors, tolerances), ``cases`` (the problems,
the cases and the plans), ``targets``, ``interference``, ``reuse``,
``report`` (printing and JSON), ``cli`` (options and the run), ``torch``,
``race``. Nothing here imports SciPy, threadpoolctl or torch until a run needs it.
"""
