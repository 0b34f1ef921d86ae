"""``slimscout leveldb``: builds once, a second run finds every layer done; a bad grid is one line."""

from __future__ import annotations

import json

from tests.test_cli import assert_one_line_error, slimscout


def test_leveldb_builds_then_reuses() -> None:
    args = ("leveldb", "--model", "tiny-llama", "--operator", "gptq", "--bits", "4", "--group-size", "32",
            "--calibration-tokens", "256", "--json")
    first = slimscout(*args)
    assert first.returncode == 0, first.stderr
    built = json.loads(first.stdout)
    assert built["layers_built"] == built["layers"] > 0 and built["disk_bytes"] > 0
    second = json.loads(slimscout(*args).stdout)
    assert second["layers_built"] == 0 and second["directory"] == built["directory"]


def test_leveldb_bad_grid_is_one_line() -> None:
    result = slimscout("leveldb", "--model", "tiny-llama", "--operator", "gptq", "--bits", "4", "--group-size", "48",
                       "--calibration-tokens", "256")
    assert_one_line_error(result, "does not divide")
