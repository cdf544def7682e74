"""Find the real BCC Python module.

The `bcc` on PyPI is an unrelated lattice library; the real one is the distribution's
(python3-bpfcc: pure Python over libbcc.so, in /usr/lib/python3/dist-packages), which a
virtualenv or a separately built Python does not see. Load it from there by path.
"""

from __future__ import annotations

import importlib.util
import os
import sys

SEARCH = ("/usr/lib/python3/dist-packages", "/usr/lib/python3/site-packages", "/usr/share/bcc/python")


class BccMissing(RuntimeError):
    pass


def load_bcc():
    mod = sys.modules.get("bcc")
    if mod is not None and hasattr(mod, "BPF"):
        return mod
    try:
        import bcc  # noqa: F401
        if hasattr(bcc, "BPF"):
            return bcc
        del sys.modules["bcc"]       # PyPI's lattice library: not ours
    except ImportError:
        pass
    for base in SEARCH:
        init = os.path.join(base, "bcc", "__init__.py")
        if os.path.exists(init):
            spec = importlib.util.spec_from_file_location(
                "bcc", init, submodule_search_locations=[os.path.join(base, "bcc")])
            mod = importlib.util.module_from_spec(spec)
            sys.modules["bcc"] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception as exc:
                del sys.modules["bcc"]
                raise BccMissing(f"BCC at {base}/bcc failed to load: {exc}. Is libbcc installed "
                                 "(apt-get install python3-bpfcc)?") from None
            return mod
    raise BccMissing("BCC's Python module was not found (looked in " + ", ".join(SEARCH) + "). Install it with "
                     "`apt-get install python3-bpfcc` (the `bcc` package on PyPI is something else).")
