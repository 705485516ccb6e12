"""Named DDR models: the one contract the RTL testbench and the performance model share.

A latency record is only as honest as the memory behind it, so the DDR the RTL runs against
and the DDR the performance model assumes are one named object. Two kinds exist:

* **board-like** (deterministic): every read burst waits ``read_latency`` cycles from the
  moment the memory takes it to its first beat, then streams one bus word per cycle; writes
  stream one word per cycle. The bus width bounds each port (``port_bytes_per_cycle``,
  16 B/cycle on a 128-bit HP port) and ``total_bytes_per_cycle`` bounds all ports together.
  The memory serves one read burst at a time (as cocotbext-axi's ``AxiRam`` does), so the
  latency is paid per burst, in series: at least, never less than, the board's.
* **verification** (random): cocotbext-axi's ``AxiRam`` with random pauses on every channel
  (``backpressure``) and a random delay of 0..``beat_delay`` cycles before each read beat.
  It finds protocol bugs; its cycle counts are a random variable, which the performance
  model follows only in expectation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DdrModel", "DDR_MODELS", "BOARD_DDR_MODEL", "VERIFY_DDR_MODEL", "ddr_model"]


@dataclass(frozen=True)
class DdrModel:
    """A DDR behind the accelerator's AXI manager port.

    Attributes
    ----------
    name : str
        What records call it (``ddr_model``).
    deterministic : bool
        True for a board-like model (no randomness: the RTL's cycle count is reproducible).
    read_latency : int
        Board-like: cycles from the memory taking a read burst to its first beat.
    port_bytes_per_cycle : int
        At most this many bytes per cycle per port (the AXI data width bounds it too).
    total_bytes_per_cycle : int
        At most this many bytes per cycle across all ports and both directions.
    backpressure : float
        Verification: probability that a channel pauses in a cycle.
    beat_delay : int
        Verification: each read beat waits 0..``beat_delay`` cycles.
    """

    name: str
    deterministic: bool
    read_latency: int = 0
    port_bytes_per_cycle: int = 16
    total_bytes_per_cycle: int = 48
    backpressure: float = 0.0
    beat_delay: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def port_rate(self, bus_bytes: int) -> float:
        """Bus words per cycle one port moves in one direction (<= 1)."""
        return min(1.0, self.port_bytes_per_cycle / bus_bytes, self.total_bytes_per_cycle / bus_bytes)


#: ZCU102 PS DDR4 (2400, 64-bit: 19.2 GB/s) through one 128-bit HP port at 300 MHz: 16 B/cycle
#: per port, 48 B/cycle (75 % of 19.2 GB/s / 300 MHz = 64 B/cycle) across the four HP ports,
#: at least 40 cycles from a read burst's address to its first beat.
BOARD_DDR_MODEL = DdrModel(name="zcu102-ps-ddr4-hp", deterministic=True, read_latency=40,
                           port_bytes_per_cycle=16, total_bytes_per_cycle=48)
#: What the RTL tests and the ``rtl`` backend use by default: random pauses (0.3) on every
#: channel, 0..4 cycles before each read beat.
VERIFY_DDR_MODEL = DdrModel(name="axiram-random-verify", deterministic=False, port_bytes_per_cycle=1 << 20,
                            total_bytes_per_cycle=1 << 20, backpressure=0.3, beat_delay=4)
DDR_MODELS = {model.name: model for model in (BOARD_DDR_MODEL, VERIFY_DDR_MODEL)}


def ddr_model(name: str) -> DdrModel:
    """The model called ``name``. Raises KeyError naming the known ones."""
    try:
        return DDR_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown DDR model {name!r}: use one of {', '.join(DDR_MODELS)}") from None
