"""The baseline allocation methods' names, torch-free (study specs and the API validate against them)."""

from __future__ import annotations

BASELINE_METHODS: tuple[str, ...] = ("uniform", "owl", "sensitivity", "additive", "softlms")
# What a study seeds by default: ``additive`` needs a per-layer scan (layers × 3 forward passes,
# about 2.6x the block scan's tokens on smollm2-135m) and ``softlms`` trains (tens of forward/backward
# passes, low-rank operators only), so a study asks for them by name.
DEFAULT_BASELINES: tuple[str, ...] = ("uniform", "owl", "sensitivity")
