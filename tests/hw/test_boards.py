"""Boards as data: the budget the issues quote for the ZCU102 follows from the part's counts."""

import pytest

from vitaccel.hw.platform.boards import BOARDS, board


def test_zcu102_limits_are_the_issue_budget():
    assert board("zcu102").limits == {"DSP48E2": 2016, "BRAM36": 729, "LUT": 191856, "FF": 383712}


def test_every_board_names_a_zynq_ultrascale_plus_part_with_hp_ports():
    for name, entry in BOARDS.items():
        assert entry.name == name
        assert entry.part.lower().startswith(entry.device.lower())
        assert entry.hp_ports == 4 and all(entry.resources[key] > 0 for key in ("DSP48E2", "LUT", "BRAM36"))


def test_unknown_board_is_one_line_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown board 'zc706': use one of zcu102, zcu104, kv260"):
        board("zc706")
