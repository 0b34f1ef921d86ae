"""The accounting must equal what the operators produce, and name the field it rejects."""

from __future__ import annotations

import pytest
import torch

from common.errors import ConfigError
from compress.accounting import DENSE_BYTES_PER_PARAM, LayerCost, layer_cost, model_cost
from compress.config import LayerConfig, LowRankSpec, QuantSpec, SparsitySpec
from compress.layers import LinearLayer
from compress.ops import (
    fake_quant,
    lowrank_params,
    magnitude_score,
    nm_mask,
    row_ranks,
    sdq,
    svd_factors,
    unstructured_mask,
    wanda_score,
)

LAYER = LinearLayer("model.layers.0.mlp.up_proj", 0, "up", in_features=128, out_features=64)


def _sparsify(matrix: torch.Tensor, spec: SparsitySpec, input_norm: torch.Tensor) -> torch.Tensor:
    score = wanda_score(matrix, input_norm) if spec.score == "wanda" else magnitude_score(matrix)
    nm = spec.nm
    keep = nm_mask(score, *nm) if nm is not None else unstructured_mask(row_ranks(score), spec.ratio)
    return matrix * keep


def _stored_matrices(weight: torch.Tensor, cfg: LayerConfig) -> list[torch.Tensor]:
    """The matrices a layer stores under cfg, after low rank and sparsity (what quant then encodes)."""
    out, inp = weight.shape
    ones = torch.rand(inp) + 0.5
    if cfg.lowrank is None:
        matrices = [weight]
    else:
        factors = svd_factors(weight)
        rank = cfg.lowrank.rank
        left, right = factors.left[:, :rank], factors.right[:rank]
        matrices = [left, right] if lowrank_params(inp, out, rank) < inp * out else [left @ right]
    if cfg.sparsity is not None:
        matrices = [_sparsify(m, cfg.sparsity, ones if m.shape[1] == inp else torch.ones(m.shape[1]))
                    for m in matrices]
    return matrices


def _quantize(matrix: torch.Tensor, quant: QuantSpec) -> torch.Tensor:
    nm = quant.outlier_nm
    return fake_quant(matrix, quant.bits, quant.group_size) if nm is None else sdq(matrix, quant.bits,
                                                                                     quant.group_size, *nm)


def _expected_params(shapes: list[tuple[int, ...]], spec: SparsitySpec | None) -> int:
    """Stored weights in closed form: all of each matrix, every row less round(ratio·cols), or n/m of it."""
    total = 0
    for rows, cols in shapes:
        if spec is None:
            total += rows * cols
        elif spec.nm is None:
            total += rows * (cols - round(spec.ratio * cols))
        else:
            n, m = spec.nm
            total += rows * cols * n // m
    return total


COMBOS = {
    "dense": LayerConfig(),
    "rank16": LayerConfig(lowrank=LowRankSpec(16)),
    "rank60-stored-dense": LayerConfig(lowrank=LowRankSpec(60, "svd")),
    "rank64-full": LayerConfig(lowrank=LowRankSpec(64)),
    "unstructured-0.37": LayerConfig(sparsity=SparsitySpec(0.37, "magnitude")),
    "wanda-0.5": LayerConfig(sparsity=SparsitySpec(0.5, "wanda")),
    "2:4": LayerConfig(sparsity=SparsitySpec(0.5, "magnitude", "2:4")),
    "rank20+unstructured-0.3": LayerConfig(lowrank=LowRankSpec(20), sparsity=SparsitySpec(0.3, "magnitude")),
    "rank13+wanda-0.45": LayerConfig(lowrank=LowRankSpec(13), sparsity=SparsitySpec(0.45)),
    "rank16+2:4": LayerConfig(lowrank=LowRankSpec(16), sparsity=SparsitySpec(0.5, "wanda", "2:4")),
    "rank60+unstructured": LayerConfig(lowrank=LowRankSpec(60), sparsity=SparsitySpec(0.2, "magnitude")),
    "int8": LayerConfig(quant=QuantSpec(8, 128)),
    "int4-g32+0.5": LayerConfig(sparsity=SparsitySpec(0.5, "magnitude"), quant=QuantSpec(4, 32)),
    "rank24+1:4+int4-sdq": LayerConfig(lowrank=LowRankSpec(24),
                                       sparsity=SparsitySpec(0.75, "magnitude", "1:4"),
                                       quant=QuantSpec(4, 16, outliers="1:8")),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_params_equal_nonzeros_the_ops_produce(name: str) -> None:
    cfg = COMBOS[name]
    torch.manual_seed(0)
    weight = torch.randn(LAYER.out_features, LAYER.in_features)
    matrices = _stored_matrices(weight, cfg)
    cost = layer_cost(LAYER, cfg)
    assert cost.params == sum(int(torch.count_nonzero(m)) for m in matrices)
    assert cost.params == _expected_params([tuple(m.shape) for m in matrices], cfg.sparsity)
    if cfg.quant is not None:  # quantization keeps the zeros and adds none beyond codes rounding to 0
        quantized = [_quantize(m, cfg.quant) for m in matrices]
        assert all(torch.all(q[m == 0] == 0) for q, m in zip(quantized, matrices, strict=True))
        assert sum(int(torch.count_nonzero(q)) for q in quantized) <= cost.params


def test_quantized_nonzeros_equal_params_when_no_code_rounds_to_zero() -> None:
    torch.manual_seed(1)
    weight = torch.sign(torch.randn(64, 128)) * (0.5 + torch.rand(64, 128))  # |w| in [0.5, 1.5]
    for cfg in (LayerConfig(sparsity=SparsitySpec(0.6, "magnitude"), quant=QuantSpec(4, 64)),
                LayerConfig(sparsity=SparsitySpec(0.5, "magnitude", "2:4"), quant=QuantSpec(4, 128, "1:8"))):
        assert cfg.sparsity is not None and cfg.quant is not None
        q = _quantize(_sparsify(weight, cfg.sparsity, torch.ones(128)), cfg.quant)
        assert int(torch.count_nonzero(q)) == layer_cost(LAYER, cfg).params


def test_dense_cost() -> None:
    dense = LayerCost(64 * 128, DENSE_BYTES_PER_PARAM * 64 * 128)
    assert layer_cost(LAYER, None) == layer_cost(LAYER, LayerConfig()) == dense
    assert layer_cost(LAYER, LayerConfig(sparsity=SparsitySpec(0.0))) == dense  # nothing pruned: no mask


def test_bytes_by_hand() -> None:
    rows, cols = 64, 128
    # low rank 16: two factors at 16 bit
    assert layer_cost(LAYER, LayerConfig(lowrank=LowRankSpec(16))) == LayerCost(16 * 192, 2 * 16 * 192)
    # unstructured 50%, int4, group 32: 4-bit values + fp16 scale per group + 1-bit mask
    kept = rows * cols // 2
    cfg = LayerConfig(sparsity=SparsitySpec(0.5, "magnitude"), quant=QuantSpec(4, 32))
    assert layer_cost(LAYER, cfg) == LayerCost(kept, kept // 2 + 2 * rows * 4 + rows * cols // 8)
    # 2:4 at 16 bit: 2-bit index per kept value
    cfg = LayerConfig(sparsity=SparsitySpec(0.5, "magnitude", "2:4"))
    assert layer_cost(LAYER, cfg) == LayerCost(kept, 2 * kept + kept * 2 // 8)
    # SDQ int4 group 128, 1:8 outliers: 16-bit outliers + 3-bit index each, on top of the int4 matrix
    cfg = LayerConfig(quant=QuantSpec(4, 128, "1:8"))
    outliers = rows * cols // 8
    assert layer_cost(LAYER, cfg) == LayerCost(rows * cols, rows * cols // 2 + 2 * rows + 2 * outliers
                                               + outliers * 3 // 8)
    # int8 with a group size that does not divide the row: ceil(cols / g) scales per row
    cfg = LayerConfig(quant=QuantSpec(8, 100))
    assert layer_cost(LAYER, cfg) == LayerCost(rows * cols, rows * cols + 2 * rows * 2)


def test_factor_sparsity_counts_each_factor_on_its_own_rows() -> None:
    cfg = LayerConfig(lowrank=LowRankSpec(10), sparsity=SparsitySpec(0.25, "magnitude"))
    # left [64, 10]: round(2.5) = 2 pruned per row; right [10, 128]: 32 pruned per row
    expected = 64 * (10 - 2) + 10 * (128 - 32)
    assert layer_cost(LAYER, cfg).params == expected
    assert layer_cost(LAYER, cfg).bytes == 2 * expected + (64 * 10 + 7) // 8 + 10 * 128 // 8


def test_rank_above_full_rank_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.mlp\.up_proj") as info:
        layer_cost(LAYER, LayerConfig(lowrank=LowRankSpec(65)))
    assert info.value.field == "lowrank.rank"


def test_nm_on_rows_not_divisible_by_m_is_rejected() -> None:
    odd = LinearLayer("model.layers.1.mlp.down_proj", 1, "down", in_features=90, out_features=64)
    with pytest.raises(ConfigError, match="in_features=90") as info:
        layer_cost(odd, LayerConfig(sparsity=SparsitySpec(0.5, "magnitude", "2:4")))
    assert info.value.field == "sparsity.pattern"
    with pytest.raises(ConfigError, match="6 low-rank factor") as info:  # left factor [64, 6]
        layer_cost(LAYER, LayerConfig(lowrank=LowRankSpec(6), sparsity=SparsitySpec(0.5, "magnitude", "2:4")))
    assert info.value.field == "sparsity.pattern"
    with pytest.raises(ConfigError, match="in_features=90") as info:
        layer_cost(odd, LayerConfig(quant=QuantSpec(4, 128, "1:8")))
    assert info.value.field == "quant.outliers"


def test_model_cost_sums_layers_and_names_bad_entries() -> None:
    other = LinearLayer("model.layers.0.mlp.down_proj", 0, "down", in_features=64, out_features=128)
    layers = [LAYER, other]
    assert model_cost(layers, {}) == LayerCost(2 * 64 * 128, 4 * 64 * 128)
    cfg = LayerConfig(lowrank=LowRankSpec(8))
    assert model_cost(layers, {LAYER.name: cfg}) == layer_cost(LAYER, cfg) + layer_cost(other, None)
    with pytest.raises(ConfigError, match=r"did you mean model\.layers\.0\.mlp\.up_proj") as info:
        model_cost(layers, {"model.layers.0.mlp.up_prj": cfg})
    assert info.value.field == "layers.model.layers.0.mlp.up_prj"
    with pytest.raises(ConfigError) as info:
        model_cost(layers, {other.name: LayerConfig(lowrank=LowRankSpec(100))})
    assert info.value.field == "layers.model.layers.0.mlp.down_proj.lowrank.rank"


def test_compression_never_costs_more_params_than_dense() -> None:
    for cfg in COMBOS.values():
        assert layer_cost(LAYER, cfg).params <= LAYER.params


def _tiny_layers() -> list[LinearLayer]:
    from compress.catalog import load_model
    from compress.layers import linear_layers

    return linear_layers(load_model("tiny-llama").model)


# tiny-llama, per block: q 64x64, k 32x64, v 32x64, o 64x64, gate 128x64, up 128x64 (28,672 weights with
# 64 inputs) and down 64x128 (8,192 weights with 128 inputs); 36,864 weights per block.
@pytest.mark.parametrize(("quant", "sparsity", "expected"), [
    # codes 4 + one 16-bit scale per 64 weights
    (QuantSpec(4, 64), None, 4 + 16 / 64),
    # gptq's group divides the inputs: 64 on 64-input layers, 128 on down
    (QuantSpec(3, 64, method="gptq"), None, (28672 * (3 + 16 / 64) + 8192 * (3 + 16 / 128)) / 36864),
    # sdq: codes 4 + scales (group 128: one per row of 64 inputs, two per row of 128 inputs: 16/64, 16/128)
    # + 1 outlier in 8 at 16 bits + 3 index bits each
    (QuantSpec(4, 128, "1:8"), None, (28672 * (4 + 16 / 64 + 19 / 8) + 8192 * (4 + 16 / 128 + 19 / 8)) / 36864),
    # half the weights kept at 8 bits + scales per 128 inputs + a 1-bit mask over every weight
    (QuantSpec(8, 128), SparsitySpec(0.5, "wanda"), (28672 * (4 + 16 / 64 + 1) + 8192 * (4 + 16 / 128 + 1)) / 36864),
])
def test_bits_per_weight_counts_every_overhead(quant: QuantSpec, sparsity: SparsitySpec | None,
                                               expected: float) -> None:
    from compress.accounting import bits_per_weight
    from compress.budget import layer_quant

    layers = _tiny_layers()
    config = {layer.name: LayerConfig(sparsity=sparsity, quant=layer_quant(layer, quant)) for layer in layers}
    assert bits_per_weight(layers, config) == pytest.approx(expected, rel=1e-12)
    assert bits_per_weight(layers, {}) == 16.0
