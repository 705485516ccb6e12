"""AccelConfig: validation with precise messages, presets, JSON round trip."""

import json

import pytest

from vitaccel.hw.spec.config import PRESETS, AccelConfig, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = PRESETS[name]
    again = AccelConfig.from_json(config.to_json())
    assert again == config
    assert again.hash() == config.hash()


def test_zcu102_fits_the_board_budget():
    # Issue 13: >= 3072 MACs per cycle within 80% of the XCZU9EG's 2520 DSP48E2 (two per DSP).
    assert PRESETS["zcu102"].macs_per_cycle >= 3072
    assert PRESETS["zcu102"].engine_dsp48e2 <= 2016
    assert PRESETS["zcu102"].dma_data_width == 128


def test_derived_geometry():
    config = AccelConfig(block_rows=2, block_cols=3, block_size=4)
    assert (config.tile_rows, config.tile_cols, config.macs_per_cycle) == (8, 12, 2 * 3 * 64)
    assert AccelConfig(block_size=1, block_rows=4, block_cols=4).macs_per_cycle == 16


@pytest.mark.parametrize("changes, message", [
    ({"block_size": 0}, "block_size: must be in 1..16, got 0"),
    ({"block_rows": 2.5}, "block_rows: must be an integer"),
    ({"operand_width": 12}, "operand_width: must be 8 or 16"),
    ({"operand_width": 16, "acc_width": 32}, "acc_width: must be 32, 48 or 64 and at least 44"),
    ({"vector_lanes": 3}, "vector_lanes: must be a power of two"),
    ({"nm_sparsity": (2, 3)}, "nm_sparsity: need 1 <= N < M <= 16"),
    ({"nm_sparsity": (4, 4)}, "nm_sparsity"),
    ({"dma_data_width": 100}, "dma_data_width"),
    ({"has_softmax": False}, "has_sparse_attention: the sparse attention unit needs has_softmax"),
    ({"has_gelu": "yes"}, "has_gelu: must be true or false"),
    ({"clock_mhz": 0}, "clock_mhz"),
    ({"sparse_max_head_dim": 0}, "sparse_max_head_dim: must be in 1..255, got 0"),
    ({"sparse_max_head_dim": 256}, "sparse_max_head_dim: must be in 1..255, got 256"),
    ({"sparse_max_head_dim": 64.0}, "sparse_max_head_dim: must be an integer"),
])
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PRESETS["tiny"].replace(**changes)


def test_unknown_fields_are_rejected():
    data = PRESETS["tiny"].to_dict() | {"block_colums": 3}
    with pytest.raises(ConfigError, match="unknown config field.*block_colums"):
        AccelConfig.from_dict(data)


def test_load_config_by_name_file_and_errors(tmp_path):
    assert load_config("tiny") is PRESETS["tiny"]
    path = tmp_path / "mine.json"
    path.write_text(PRESETS["tiny"].replace(name="mine", block_size=4).to_json())
    assert load_config(path).block_size == 4
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(bad)


def test_sparse_max_head_dim_default_and_presets_cover_deit():
    assert AccelConfig().sparse_max_head_dim == 64
    assert PRESETS["tiny"].sparse_max_head_dim == PRESETS["zcu102"].sparse_max_head_dim == 64
