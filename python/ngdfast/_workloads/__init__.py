"""The training problems ngdfast is judged on, defined once for the demos, the bench and races.

Private: the models, data splits and settings here are those of ``python -m ngdfast demo``
and ``python -m ngdfast bench --kernels torch``, and change with them; users train their
own models with :mod:`ngdfast` and :mod:`ngdfast.torch`.

A workload is data, a model, an objective, a held-out evaluation and the settings each
method runs it with:

========  =============================================  ==============================
workload  data                                           model (module)
========  =============================================  ==============================
digits    scikit-learn's 8×8 digits, stratified 75/25     softmax, MLP (:mod:`ngdfast.demo`);
          (:func:`load_digits_split`)                     the CNN (:mod:`._workloads.torch`)
chars     Python's English help topics                   character-level GPT
          (``pydoc_data.topics``), contiguous 90/10       (:mod:`._workloads.torch`)
          (:class:`HelpText`)
========  =============================================  ==============================

Modules:

* this package: the data (NumPy only) and the measurement of a run (:class:`Run`,
  :func:`timed_run`, :func:`fastest`, :func:`grid_search`); it never imports torch, so the
  NumPy demo does not either;
* :mod:`._workloads.torch`: the torch models, objectives and training loops.
"""

from .data import HelpText, load_digits_split
from .runs import Run, fastest, grid_search, progress, timed_run

__all__ = ["HelpText", "Run", "fastest", "grid_search", "load_digits_split", "progress", "timed_run"]
