"""The baseline allocation methods' names, torch-free (study specs and the API validate against them)."""

from __future__ import annotations

BASELINE_METHODS: tuple[str, ...] = ("uniform", "owl", "sensitivity")
