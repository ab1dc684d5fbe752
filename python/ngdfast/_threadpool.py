"""ngdfast's thread pool as seen by ``threadpoolctl``.

Registered at ``import ngdfast`` when threadpoolctl (>= 3.0, which has
``threadpoolctl.register``) is installed; importing it costs ~2 ms. Then
``threadpool_info()`` lists the pool (``user_api`` and ``internal_api``
``"ngdfast"``, ``filepath`` the compiled ``_core`` module) and
``threadpool_limits(1)`` or ``threadpool_limits(limits={"ngdfast": 1})``
limits it and restores it on exit, as for OpenBLAS and OpenMP. The controller
talks to the exported C functions ``ngdfast_get_num_threads`` and
``ngdfast_set_num_threads`` of ``_core``.
"""

from __future__ import annotations

import sys

REGISTERED = False


def _register() -> bool:
    try:
        import threadpoolctl
        from threadpoolctl import LibController
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register"):  # threadpoolctl < 3.0
        return False

    class NgdfastController(LibController):
        """threadpoolctl controller of ngdfast's compiled kernels' pool."""

        user_api = "ngdfast"
        internal_api = "ngdfast"
        filename_prefixes = ("_core",)  # ngdfast/_core.cpython-*.so; other _core modules lack the symbols
        check_symbols = ("ngdfast_get_num_threads", "ngdfast_set_num_threads")

        def get_num_threads(self):
            get = getattr(self.dynlib, "ngdfast_get_num_threads", None)
            n = get() if get is not None else -1
            return n if n > 0 else None

        def set_num_threads(self, num_threads):
            setter = getattr(self.dynlib, "ngdfast_set_num_threads", None)
            if setter is not None:
                setter(max(1, min(int(num_threads), 1024)))

        def get_version(self):
            package = sys.modules.get("ngdfast")
            return getattr(package, "__version__", None)

    threadpoolctl.register(NgdfastController)
    return True


REGISTERED = _register()
