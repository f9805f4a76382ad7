"""What a worker interpreter needs from the main one, and how it gets it.

The main interpreter builds a *bootstrap* when the runtime starts: its
``sys.argv`` (``sys.path`` is copied by the binding itself), and an image of the ``__main__`` module (see
``_main_image``) whose bind values travel as separate blobs.  Each worker
applies it to its own ``__main__`` before it runs any behavior, so behavior
bodies defined in a script see the script's imports, functions, classes and
constants -- without the script's top-level statements ever running again.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _core, _main_image

#: Warnings from applying the ``__main__`` image in this worker (for debugging).
image_warnings: list[str] = []


def build_bootstrap() -> tuple[dict[str, Any], list[Any]]:
    """Main interpreter: the bootstrap header and the bind values it refers to."""
    main = sys.modules.get("__main__")
    steps: list[tuple[Any, ...]] = []
    values: list[Any] = []
    if main is not None:
        for step in _main_image.build_image(main, _core._is_transferable):
            if step[0] == "bind":
                values.append(step[2])
                steps.append(("bind", step[1], len(values) - 1))
            else:
                steps.append(step)
    # sys.path travels separately (the binding sets it before importing bocpy).
    header = {"argv": list(sys.argv), "steps": steps}
    return header, values


def bootstrap() -> None:
    """Worker interpreter: adopt the main interpreter's paths and ``__main__``."""
    header = _core._bootstrap_header()
    if header is None:
        return
    sys.argv[:] = header["argv"]
    main = sys.modules["__main__"]
    image_warnings[:] = _main_image.apply_image(
        header["steps"], main.__dict__, load=_core._bootstrap_value
    )
