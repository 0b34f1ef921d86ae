"""A new operator is one module plus its registration: nothing in the session, accounting or proxy changes.

The toy operator here is shaped like issue 17's reconstruction operators: its result for each level
is computed once in ``warm`` into a per-session "level database" (``ctx.handler_cache``) and
``sparsify`` only loads it. It lives in a module written to a temporary directory and is named in
the registry by "module:attr", exactly as a real one would be.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from common.errors import ConfigError
from compress import registry
from compress.accounting import layer_cost
from compress.catalog import load_model
from compress.config import CompressionConfig, LayerConfig, SparsitySpec, config_from_dict
from compress.operators import sparsity_handler
from compress.operators.base import output_error
from compress.session import ModelSession
from predictor.proxy import LayerProxy

TOY_MODULE = textwrap.dedent('''
    import torch
    from compress.operators.base import SparsityHandler
    from compress.ops import magnitude_score, row_ranks, unstructured_mask


    class ToyLevels(SparsityHandler):
        """Magnitude mask, then the kept weights rescaled to keep each row's L1 norm (a toy 'update')."""

        def warm(self, ctx, name, spec):
            database = ctx.handler_cache(self.name)
            if (name, spec.ratio) not in database:
                weight = ctx.dense_weight(name)
                kept = weight.masked_fill(~unstructured_mask(row_ranks(magnitude_score(weight)), spec.ratio), 0)
                scale = weight.abs().sum(1, keepdim=True) / kept.abs().sum(1, keepdim=True).clamp_min(1e-12)
                database[(name, spec.ratio)] = kept * scale
                self.builds += 1

        def sparsify(self, ctx, name, matrix, spec, *, col_norm=None, ranks=None):
            if matrix.shape != ctx.dense_weight(name).shape:
                raise ValueError("toy-levels stores whole weights, not low-rank factors")
            self.warm(ctx, name, spec)  # built lazily when nobody warmed it
            return ctx.handler_cache(self.name)[(name, spec.ratio)]


    HANDLER = ToyLevels("toy-levels")
    HANDLER.builds = 0
''')


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "toy_levels_op.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.METHODS, ("sparsity", "toy-levels"),
                        registry.MethodInfo("sparsity", "toy-levels", "toy_levels_op:HANDLER", "toy"))
    monkeypatch.setitem(registry.OPERATORS, "toy-levels",
                        registry.OperatorInfo("toy-levels", "sparsity", "toy", "toy-levels"))
    yield "toy-levels"
    sys.modules.pop("toy_levels_op", None)


@pytest.fixture
def session(tmp_path: Path) -> ModelSession:
    return ModelSession(load_model("tiny-llama"), cache_dir=tmp_path / "cache", calibration_tokens=512)


def test_a_registered_operator_is_applied_costed_and_proxied(toy: str, session: ModelSession) -> None:
    names = [layer.name for layer in session.layers]
    doc = {"schema": "slimscout.config/v1", "model_id": "tiny-llama",
           "layers": {names[0]: {"sparsity": {"ratio": 0.5, "score": toy}},
                      names[1]: {"sparsity": {"ratio": 0.25, "score": toy}}}}
    config = config_from_dict(doc)
    handler = sparsity_handler(toy)
    session.warm(config)
    assert handler.builds == 2  # type: ignore[attr-defined]  # one level-database entry per layer entry
    before = {name: session.modules[name].weight.detach().clone() for name in names}
    session.apply(config)
    for name, ratio in ((names[0], 0.5), (names[1], 0.25)):
        stored = session.handler_cache(toy)[(name, ratio)]
        assert torch.equal(session.modules[name].weight, stored)  # loaded, bit for bit
        assert not torch.equal(stored, before[name])
    session.apply(config)
    session.warm(config)
    assert handler.builds == 2  # type: ignore[attr-defined]  # warming and applying again builds nothing
    session.restore()
    assert all(torch.equal(session.modules[n].weight, before[n]) for n in names)
    # The cost is the sparsity slot's stored format, the same as any unstructured method's.
    layer = session.by_name[names[0]]
    assert layer_cost(layer, config.layers[names[0]]) == layer_cost(layer, LayerConfig(sparsity=SparsitySpec(0.5)))
    # The proxy has no score to tabulate: it takes the exact output error of the weight applied.
    proxy = LayerProxy(session)
    expected = output_error(session.dense_weight(names[0]), session.handler_cache(toy)[(names[0], 0.5)],
                            session.stats().gram(names[0]))
    assert proxy.error(names[0], config.layers[names[0]]) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < 1.0


def test_a_registered_operator_builds_lazily_when_not_warmed(toy: str, session: ModelSession) -> None:
    name = session.layers[2].name
    config = CompressionConfig("tiny-llama", {name: LayerConfig(sparsity=SparsitySpec(0.5, toy))})
    session.apply(config)
    assert torch.equal(session.modules[name].weight, session.handler_cache(toy)[(name, 0.5)])


def test_without_registration_the_name_is_refused(session: ModelSession) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"schema": "slimscout.config/v1", "model_id": "tiny-llama",
                          "layers": {session.layers[0].name: {"sparsity": {"ratio": 0.5, "score": "toy-levels"}}}})
    assert info.value.field == f"layers.{session.layers[0].name}.sparsity.score"


def test_unknown_scores_are_errors_not_magnitude(session: ModelSession) -> None:
    name = session.layers[0].name
    with pytest.raises(ConfigError) as info:
        session.score("random", name)
    assert info.value.field == "score"
    with pytest.raises(ConfigError):
        session.ranks("random")
    assert torch.equal(session.score("magnitude", name), session.dense_weight(name).abs())


def test_output_error_is_the_relative_output_error() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 16, dtype=torch.float64)
    w = torch.randn(8, 16, dtype=torch.float64)
    approx = w.clone()
    approx[:, :4] = 0
    direct = float(((x @ (w - approx).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert output_error(w, approx, x.T @ x) == pytest.approx(direct, rel=1e-10)
    assert output_error(w, w, x.T @ x) == 0.0


def test_the_empty_config_and_registered_defaults_still_work(session: ModelSession) -> None:
    assert session.cost(CompressionConfig("tiny-llama")).params == session.params_linear
