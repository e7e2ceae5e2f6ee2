"""The deploy graph's op kinds, one module each (conversion/ops/base.py describes what a kind declares).

Importing the package registers every module in it, so adding an op kind is adding one file here.
"""
from __future__ import annotations

import importlib
import pkgutil

from conversion.ops.base import (OpKind, get, i64, fake_quant, kinds, prepare, register, require,  # noqa: F401
                                 rule, stateless)

for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _m != "base":
        importlib.import_module(f"{__name__}.{_m}")
