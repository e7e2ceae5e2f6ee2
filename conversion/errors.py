"""The conversion's error types (one module, so that the emitters, the op registry and the stage checks
can all raise them without importing one another)."""
from __future__ import annotations


class ExportError(ValueError):
    """The model cannot be exported as asked; one-line message."""


class ConversionError(RuntimeError):
    """A conversion stage disagreed with the one before it, or the model cannot be lowered."""


class OpRuleError(ExportError, ConversionError):
    """An op of the deploy graph whose kind is unknown, or that lacks a rule the target needs (one line naming
    the op and the rule). Both an ExportError and a ConversionError: the model cannot be lowered as asked."""
