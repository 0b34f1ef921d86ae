import itertools
import math

import pytest

from compress.lr_schedule import LR_SCHEDULES, learning_rate


def test_cosine_starts_at_the_base_rate_and_decays_to_zero_at_the_last_step() -> None:
    rates = [learning_rate(1e-3, "cosine", 0, step, 10) for step in range(11)]
    assert rates[0] == pytest.approx(1e-3)
    assert rates[5] == pytest.approx(0.5e-3)
    assert rates[10] == pytest.approx(0.0, abs=1e-18)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert learning_rate(1e-3, "cosine", 0, 13, 10) == pytest.approx(0.0, abs=1e-18)  # past the end: not rising again


def test_warmup_rises_linearly_then_hands_over_to_the_schedule() -> None:
    rates = [learning_rate(1e-3, "constant", 4, step, 10) for step in range(6)]
    assert rates == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3])
    assert learning_rate(1e-3, "cosine", 4, 2, 10) == pytest.approx(0.75e-3 * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_unknown_schedules_and_long_warmups_are_refused_by_name() -> None:
    from common.errors import ConfigError
    from compress.recover import RecoverSettings

    with pytest.raises(ConfigError, match="schedule"):
        RecoverSettings(schedule="linear")
    with pytest.raises(ConfigError, match="warmup"):
        RecoverSettings(warmup=-1)
    with pytest.raises(ConfigError, match="factor_lr_scale"):
        RecoverSettings(factor_lr_scale=0)
    assert set(LR_SCHEDULES) == {"constant", "cosine"}
