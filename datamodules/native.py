"""Libraries with native code that only some data needs, imported when that data is first read.

torchaudio and soundfile are needed only for audio, torchvision and Pillow only for images: each ships
a compiled library that can fail to load (torchaudio 2.11.1 beside torch 2.11.0 did, on import), and
text must keep working when one does. A modality's module therefore imports them through ``require``
inside the functions that use them, never at module level.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

FIX = "install the locked environment (make install, docs/INSTALL.md), or a {package} built for torch {torch}"


class MissingLibrary(ImportError):
    """A native library that one kind of data needs did not import; the message says which, why and
    what to do, on one line."""


def require(module: str, needed_for: str) -> ModuleType:
    """``module`` imported, or a one-line ``MissingLibrary`` naming it, the error its import raised and
    the fix. ``needed_for`` says what needs it ("audio", "images")."""
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as error:
        package = module.split(".")[0]
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
        fix = FIX.format(package=package, torch=torch.__version__)
        message = f"{needed_for} needs {package}, whose import failed ({reason}); {fix}"
        raise MissingLibrary(message) from error
