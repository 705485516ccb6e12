# Clock constraint for @TOP_NAME@ (config @CONFIG_NAME@) on the @BOARD_TITLE@, part @PART@:
# @CLOCK_MHZ@ MHz = @PERIOD_NS@ ns.
#
# In the block design the accelerator's clk is pl_clk0, which the zynq_ultra_ps_e IP
# constrains itself from PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ (set to @CLOCK_MHZ@ by the Tcl
# script). This constraint covers the top synthesized on its own (out of context), where
# clk is a port; -quiet keeps it silent inside the block design.
create_clock -name accel_clk -period @PERIOD_NS@ [get_ports -quiet clk]

# rst comes from proc_sys_reset, synchronous to clk: no false path needed.
