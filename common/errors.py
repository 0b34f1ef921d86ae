"""One exception tree for everything a user can get wrong; the CLI prints these as one line."""

from __future__ import annotations


class SlimscoutError(Exception):
    """Base of every error slimscout raises on purpose."""


class ModelNotFoundError(SlimscoutError):
    """A model id that resolves to nothing loadable."""


class UnsafeCheckpointError(SlimscoutError):
    """A checkpoint that would need pickle or remote code to load."""


class DatasetError(SlimscoutError):
    """An unknown, empty or too short evaluation dataset."""


class ConfigError(SlimscoutError):
    """A config document that fails validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message

    @classmethod
    def check(cls, owner: object, checks: list[tuple[str, bool, str]]) -> None:
        """Raise for the first ``(field, ok, message)`` that is not ok, quoting ``owner``'s value of it."""
        for name, ok, message in checks:
            if not ok:
                raise cls(name, f"{message}, got {getattr(owner, name)!r}")


class BudgetError(SlimscoutError):
    """A budget that cannot be met (outside (0, 1], or below what the operators can reach)."""


class ExportError(SlimscoutError):
    """An export that cannot be written (the target exists, or is not ours to replace)."""


class CorruptCheckpointError(ModelNotFoundError):
    """An exported checkpoint whose files are missing, truncated, or disagree with its manifest."""


class BenchmarkError(SlimscoutError):
    """A speed measurement that cannot run as asked (e.g. longer than the model's context)."""
