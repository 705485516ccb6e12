"""The accelerator's bus side: AXI4/AXI4-Lite signatures, the AXI4 manager DMA and the
AXI4-Lite register file."""
