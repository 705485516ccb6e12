"""AXI4-Lite register file in Amaranth's simulator, driven by a small AXI4-Lite host model
that presents address and data in random order and stalls the response channels."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from vitaccel.hw.axi.lite import (AxiLiteRegisters, FieldSpec, RegisterMap, RegisterSpec,
                                  accelerator_register_map)
from vitaccel.hw.axi.signatures import AXI_RESP_OKAY, AXI_RESP_SLVERR
from vitaccel.hw.spec.regmap import REGISTERS

MAP = RegisterMap((
    RegisterSpec("CTRL", 0x00, "w1s", 4),
    RegisterSpec("SCALE", 0x04, "rw", 20, reset=0x12345),
    RegisterSpec("STATUS", 0x08, "ro", 32),
    RegisterSpec("IRQ", 0x0C, "w1c", 3, reset=0b100, fields=(FieldSpec("done", 0, 1), FieldSpec("err", 1, 2))),
    RegisterSpec("BASE", 0x40, "rw", 32),
))


class _Host:
    def __init__(self, dut, rng):
        self.bus, self.rng, self.dut = dut.bus, rng, dut
        self.pulses: list[tuple[str, int]] = []

    async def _tick(self, ctx):
        for reg in MAP.registers:
            if reg.access == "w1s":
                value = ctx.get(getattr(self.dut.regs, reg.port_name))
                if value:
                    self.pulses.append((reg.name, value))
        await ctx.tick()

    async def write(self, ctx, addr, data, strb=0xF):
        bus = self.bus
        aw_pending, w_pending = True, True
        aw_delay, w_delay = self.rng.randint(0, 3), self.rng.randint(0, 3)
        ctx.set(bus.bready, 0)
        cycles = 0
        while aw_pending or w_pending:
            ctx.set(bus.awvalid, aw_pending and cycles >= aw_delay)
            ctx.set(bus.awaddr, addr)
            ctx.set(bus.wvalid, w_pending and cycles >= w_delay)
            ctx.set(bus.wdata, data)
            ctx.set(bus.wstrb, strb)
            aw_done = ctx.get(bus.awvalid) and ctx.get(bus.awready)
            w_done = ctx.get(bus.wvalid) and ctx.get(bus.wready)
            await self._tick(ctx)
            aw_pending &= not aw_done
            w_pending &= not w_done
            cycles += 1
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        for _ in range(20):
            ctx.set(bus.bready, self.rng.random() < 0.6)
            if ctx.get(bus.bvalid) and ctx.get(bus.bready):
                resp = ctx.get(bus.bresp)
                await self._tick(ctx)
                ctx.set(bus.bready, 0)
                return resp
            await self._tick(ctx)
        raise AssertionError(f"no write response for {addr:#x}")

    async def read(self, ctx, addr):
        bus = self.bus
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arvalid, 1)
        while not ctx.get(bus.arready):
            await self._tick(ctx)
        await self._tick(ctx)
        ctx.set(bus.arvalid, 0)
        for _ in range(20):
            ctx.set(bus.rready, self.rng.random() < 0.6)
            if ctx.get(bus.rvalid) and ctx.get(bus.rready):
                value = (ctx.get(bus.rdata), ctx.get(bus.rresp))
                await self._tick(ctx)
                ctx.set(bus.rready, 0)
                return value
            await self._tick(ctx)
        raise AssertionError(f"no read response for {addr:#x}")


def _simulate(dut, body):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(body)
    sim.run()


def test_register_access_semantics():
    dut = AxiLiteRegisters(MAP)
    rng = random.Random(3)
    host = _Host(dut, rng)

    async def body(ctx):
        assert await host.read(ctx, 0x04) == (0x12345, AXI_RESP_OKAY)     # RW reset value
        assert await host.read(ctx, 0x0C) == (0b100, AXI_RESP_OKAY)       # W1C reset value
        assert await host.write(ctx, 0x04, 0xFFFFFFFF) == AXI_RESP_OKAY
        assert await host.read(ctx, 0x04) == (0xFFFFF, AXI_RESP_OKAY)     # 20 bits kept
        assert await host.write(ctx, 0x04, 0x00AB0000, strb=0b0100) == AXI_RESP_OKAY
        assert await host.read(ctx, 0x04) == (0xBFFFF, AXI_RESP_OKAY)     # one byte lane only
        for _ in range(5):
            value = rng.getrandbits(32)
            ctx.set(dut.regs.status, value)
            assert await host.read(ctx, 0x08) == (value, AXI_RESP_OKAY)
            assert await host.write(ctx, 0x08, ~value & 0xFFFFFFFF) == AXI_RESP_OKAY  # ignored
            assert await host.read(ctx, 0x08) == (value, AXI_RESP_OKAY)
            base = rng.getrandbits(32)
            assert await host.write(ctx, 0x40, base) == AXI_RESP_OKAY
            assert ctx.get(dut.regs.base) == base
        # W1C: hardware sets, host clears chosen bits; a set in the clearing cycle survives.
        assert await host.write(ctx, 0x0C, 0b111) == AXI_RESP_OKAY
        ctx.set(dut.regs.irq_set, 0b011)
        await ctx.tick()
        ctx.set(dut.regs.irq_set, 0)
        assert await host.read(ctx, 0x0C) == (0b011, AXI_RESP_OKAY)
        assert await host.write(ctx, 0x0C, 0b001) == AXI_RESP_OKAY
        assert await host.read(ctx, 0x0C) == (0b010, AXI_RESP_OKAY)
        # W1S: one pulse of the written bits, reads 0.
        host.pulses.clear()
        assert await host.write(ctx, 0x00, 0b1010) == AXI_RESP_OKAY
        await ctx.tick()
        assert host.pulses == [("CTRL", 0b1010)]
        assert await host.read(ctx, 0x00) == (0, AXI_RESP_OKAY)
        # Unmapped addresses answer SLVERR.
        assert await host.read(ctx, 0x10) == (0, AXI_RESP_SLVERR)
        assert await host.write(ctx, 0x44, 1) == AXI_RESP_SLVERR

    _simulate(dut, body)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_accelerator_map_comes_from_the_spec():
    regmap = accelerator_register_map()
    assert [r.name for r in regmap.registers] == [r.name for r in REGISTERS]
    assert [r.offset for r in regmap.registers] == [r.offset for r in REGISTERS]
    by_name = {r.name: r for r in regmap.registers}
    assert by_name["STATUS"].width == 3 and by_name["CONTROL"].access == "w1s"
    assert RegisterMap.from_dict(regmap.to_dict()) == regmap
    dut = AxiLiteRegisters(regmap)
    assert "interrupt_status_set" in dut.regs.signature.members


@pytest.mark.parametrize("bad,message", [
    (lambda: RegisterSpec("A", 2, "rw"), "multiple of 4"),
    (lambda: RegisterSpec("A", 0, "rx"), "access must be"),
    (lambda: RegisterSpec("A", 0, "rw", 4, reset=16), "does not fit"),
    (lambda: RegisterSpec("A", 0, "ro", 4, reset=1), "no reset"),
    (lambda: RegisterSpec("A", 0, "rw", 4, fields=(FieldSpec("x", 3, 2),)), "exceeds"),
    (lambda: RegisterSpec("A", 0, "rw", 8, fields=(FieldSpec("x", 0, 2), FieldSpec("y", 1, 2))), "overlaps"),
    (lambda: RegisterMap((RegisterSpec("A", 0, "rw"), RegisterSpec("B", 0, "rw"))), "share offset"),
    (lambda: RegisterSpec("1A", 0, "rw"), "identifier"),
])
def test_bad_descriptions_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()
