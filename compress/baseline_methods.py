"""The baseline allocation methods' names, torch-free (study specs and the API validate against them)."""

from __future__ import annotations

BASELINE_METHODS: tuple[str, ...] = ("uniform", "owl", "sensitivity", "softlms")
# What a study seeds itself with unless told otherwise: softlms trains (tens of forward/backward
# passes) and only applies to low-rank operators, so a study asks for it by name.
DEFAULT_BASELINES: tuple[str, ...] = ("uniform", "owl", "sensitivity")
