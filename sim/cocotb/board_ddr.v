// Board-like DDR for latency records: an AXI4 subordinate in Verilog that behaves, cycle for
// cycle, as vitaccel.sim.cocotb.axi_models.board_ram (cocotbext-axi's AxiRam plus a fixed
// read latency), so that a whole-program simulation runs no Python per clock cycle. The
// equivalence is tested on whole programs (tests/sim/test_board_ddr.py).
//
// AxiRam is five stream channels with queues of two entries and two processes. Each edge
// has two phases, in this order (as cocotb resumes them):
//   A. the channels: a sink (AR, AW, W) takes a handshake into its queue and is ready after
//      the edge while its queue holds fewer than two entries; a source (R, B) drives the
//      next queued item once the channel is free (VALID low, or READY high).
//   B. the processes: the read process takes the next AR off its queue, waits until the
//      edge READ_LATENCY after that burst's handshake, then queues its beats on R (two at
//      most waiting); the write process takes an AW, then its W beats (writing the memory),
//      then queues the response on B.
// Items a process queues or takes in phase B are seen by the channels from the next edge.
//
// Protocol checks (AxiRam's assertions, and what this model assumes): INCR bursts of
// full-width beats, no burst across a 4 KiB boundary, WLAST on exactly the last beat. A
// violation sets PROTOCOL_ERROR (sticky, first code wins): 1 read burst type, 2 read beat
// size, 3 read across 4 KiB, 4 write burst type, 5 write beat size, 6 write across 4 KiB,
// 7 WLAST misplaced. Accesses outside the memory answer SLVERR, as AxiRam's do.
//
// The contents are loaded from ddr_in.hex and dumped to ddr_out.hex in the simulator's
// working directory (one word per line, $readmemh / $writememh) on DDR_LOAD / DDR_DUMP.
module vitaccel_board_ddr #(
    parameter integer ADDR_WIDTH = 40,
    parameter integer DATA_BYTES = 16,
    parameter integer WORDS = 1024,
    parameter integer READ_LATENCY = 40
) (
    input  wire                      clk,
    input  wire                      rst,
    input  wire                      ddr_load,
    input  wire                      ddr_dump,
    output reg  [7:0]                protocol_error,
    input  wire                      awvalid,
    output reg                       awready,
    input  wire [ADDR_WIDTH-1:0]     awaddr,
    input  wire [7:0]                awlen,
    input  wire [2:0]                awsize,
    input  wire [1:0]                awburst,
    input  wire                      awid,
    input  wire                      wvalid,
    output reg                       wready,
    input  wire [8*DATA_BYTES-1:0]   wdata,
    input  wire [DATA_BYTES-1:0]     wstrb,
    input  wire                      wlast,
    output reg                       bvalid,
    input  wire                      bready,
    output reg  [1:0]                bresp,
    output reg                       bid,
    input  wire                      arvalid,
    output reg                       arready,
    input  wire [ADDR_WIDTH-1:0]     araddr,
    input  wire [7:0]                arlen,
    input  wire [2:0]                arsize,
    input  wire [1:0]                arburst,
    input  wire                      arid,
    output reg                       rvalid,
    input  wire                      rready,
    output reg  [8*DATA_BYTES-1:0]   rdata,
    output reg  [1:0]                rresp,
    output reg                       rid,
    output reg                       rlast
);
    localparam integer SHIFT = $clog2(DATA_BYTES);
    localparam [1:0] INCR = 2'd1, OKAY = 2'd0, SLVERR = 2'd2;
    localparam [1:0] IDLE = 2'd0, WAIT = 2'd1, SEND = 2'd2;
    localparam [1:0] W_BEATS = 2'd1, RESPOND = 2'd2;

    reg [8*DATA_BYTES-1:0] mem [0:WORDS-1];
    reg [63:0] now;

    // Channel queues of two entries: index 0 is the head.
    reg [1:0]            ar_count;
    reg [ADDR_WIDTH-1:0] ar_q_addr [0:1];
    reg [8:0]            ar_q_beats [0:1];
    reg                  ar_q_id [0:1];
    reg [63:0]           ar_q_time [0:1];
    reg [1:0]            r_count;
    reg [8*DATA_BYTES-1:0] r_q_data [0:1];
    reg [1:0]            r_q_resp [0:1];
    reg                  r_q_id [0:1];
    reg                  r_q_last [0:1];
    reg [1:0]            aw_count;
    reg [ADDR_WIDTH-1:0] aw_q_addr [0:1];
    reg [8:0]            aw_q_beats [0:1];
    reg                  aw_q_id [0:1];
    reg [1:0]            w_count;
    reg [8*DATA_BYTES-1:0] w_q_data [0:1];
    reg [DATA_BYTES-1:0] w_q_strb [0:1];
    reg                  w_q_last [0:1];
    reg [1:0]            b_count;
    reg [1:0]            b_q_resp [0:1];
    reg                  b_q_id [0:1];

    // The read process: the burst it serves.
    reg [1:0]            read_state;
    reg [63:0]           read_due;
    reg [ADDR_WIDTH-1:0] read_word;
    reg [8:0]            read_left;
    reg                  read_id;
    // The write process: the burst it serves.
    reg [1:0]            write_state;
    reg [ADDR_WIDTH-1:0] write_word;
    reg [8:0]            write_left;
    reg                  write_id;
    reg                  write_error;

    reg [8*DATA_BYTES-1:0] merged;
    integer              lane, step;

    task automatic flag(input [7:0] code);
        if (protocol_error == 8'd0) protocol_error = code;
    endtask

    function automatic crosses_4k(input [ADDR_WIDTH-1:0] address, input [7:0] len, input [2:0] size);
        reg [ADDR_WIDTH-1:0] aligned;
        begin
            aligned = (address >> size) << size;
            crosses_4k = (13'h1000 - {1'b0, aligned[11:0]}) < ((len + 13'd1) << size);
        end
    endfunction

    always @(posedge clk) begin
        if (ddr_load) $readmemh("ddr_in.hex", mem);
        if (ddr_dump) $writememh("ddr_out.hex", mem);
    end

    // Outputs as this edge leaves them (blocking copies, driven with <= at the end: the design
    // samples the values from before the edge).
    reg                  ar_ready, aw_ready, w_ready, r_valid, r_last, r_id, b_valid, b_id;
    reg [1:0]            r_resp, b_resp;
    reg [8*DATA_BYTES-1:0] r_data;

    // One process with blocking assignments: the order of the statements is the order of
    // the phases.
    always @(posedge clk) begin
        if (rst) begin
            now = 64'd0;
            ar_ready = 1'b0; aw_ready = 1'b0; w_ready = 1'b0;
            r_valid = 1'b0; r_last = 1'b0; r_resp = OKAY; r_id = 1'b0; r_data = 0;
            b_valid = 1'b0; b_resp = OKAY; b_id = 1'b0;
            ar_count = 0; r_count = 0; aw_count = 0; w_count = 0; b_count = 0;
            read_state = IDLE; write_state = IDLE; protocol_error = 8'd0;
        end else begin
            // Phase A: the channels, on the values from before the edge.
            if (arvalid && ar_ready) begin
                if (arburst != INCR) flag(8'd1);
                if ((1 << arsize) != DATA_BYTES) flag(8'd2);
                if (crosses_4k(araddr, arlen, arsize)) flag(8'd3);
                ar_q_addr[ar_count[0]] = araddr >> SHIFT;
                ar_q_beats[ar_count[0]] = {1'b0, arlen} + 9'd1;
                ar_q_id[ar_count[0]] = arid;
                ar_q_time[ar_count[0]] = now;
                ar_count = ar_count + 2'd1;
            end
            ar_ready = ar_count < 2;
            if (!r_valid || rready) begin
                if (r_count != 0) begin
                    r_valid = 1'b1; r_data = r_q_data[0]; r_resp = r_q_resp[0]; r_id = r_q_id[0];
                    r_last = r_q_last[0];
                    r_q_data[0] = r_q_data[1]; r_q_resp[0] = r_q_resp[1]; r_q_id[0] = r_q_id[1];
                    r_q_last[0] = r_q_last[1];
                    r_count = r_count - 2'd1;
                end else begin
                    r_valid = 1'b0;
                end
            end
            if (awvalid && aw_ready) begin
                if (awburst != INCR) flag(8'd4);
                if ((1 << awsize) != DATA_BYTES) flag(8'd5);
                if (crosses_4k(awaddr, awlen, awsize)) flag(8'd6);
                aw_q_addr[aw_count[0]] = awaddr >> SHIFT;
                aw_q_beats[aw_count[0]] = {1'b0, awlen} + 9'd1;
                aw_q_id[aw_count[0]] = awid;
                aw_count = aw_count + 2'd1;
            end
            aw_ready = aw_count < 2;
            if (wvalid && w_ready) begin
                w_q_data[w_count[0]] = wdata;
                w_q_strb[w_count[0]] = wstrb;
                w_q_last[w_count[0]] = wlast;
                w_count = w_count + 2'd1;
            end
            w_ready = w_count < 2;
            if (!b_valid || bready) begin
                if (b_count != 0) begin
                    b_valid = 1'b1; b_resp = b_q_resp[0]; b_id = b_q_id[0];
                    b_q_resp[0] = b_q_resp[1]; b_q_id[0] = b_q_id[1];
                    b_count = b_count - 2'd1;
                end else begin
                    b_valid = 1'b0;
                end
            end

            // Phase B: the processes. Each step either moves on or stops for this edge.
            for (step = 0; step < 8; step = step + 1) begin
                if (read_state == IDLE && ar_count != 0) begin
                    read_word = ar_q_addr[0]; read_left = ar_q_beats[0]; read_id = ar_q_id[0];
                    read_due = ar_q_time[0] + READ_LATENCY;
                    ar_q_addr[0] = ar_q_addr[1]; ar_q_beats[0] = ar_q_beats[1]; ar_q_id[0] = ar_q_id[1];
                    ar_q_time[0] = ar_q_time[1];
                    ar_count = ar_count - 2'd1;
                    read_state = read_due > now ? WAIT : SEND;
                end else if (read_state == WAIT && read_due == now) begin
                    read_state = SEND;
                end else if (read_state == SEND && r_count < 2) begin
                    r_q_data[r_count[0]] = read_word < WORDS ? mem[read_word] : 0;
                    r_q_resp[r_count[0]] = read_word < WORDS ? OKAY : SLVERR;
                    r_q_id[r_count[0]] = read_id;
                    r_q_last[r_count[0]] = read_left == 9'd1;
                    r_count = r_count + 2'd1;
                    read_word = read_word + 1;
                    read_left = read_left - 9'd1;
                    if (read_left == 0) read_state = IDLE;
                end
            end
            for (step = 0; step < 8; step = step + 1) begin
                if (write_state == IDLE && aw_count != 0) begin
                    write_word = aw_q_addr[0]; write_left = aw_q_beats[0]; write_id = aw_q_id[0];
                    write_error = 1'b0;
                    aw_q_addr[0] = aw_q_addr[1]; aw_q_beats[0] = aw_q_beats[1]; aw_q_id[0] = aw_q_id[1];
                    aw_count = aw_count - 2'd1;
                    write_state = W_BEATS;
                end else if (write_state == W_BEATS && w_count != 0) begin
                    if (w_q_last[0] != (write_left == 9'd1)) flag(8'd7);
                    if (write_word < WORDS) begin
                        merged = mem[write_word];
                        for (lane = 0; lane < DATA_BYTES; lane = lane + 1)
                            if (w_q_strb[0][lane]) merged[8*lane +: 8] = w_q_data[0][8*lane +: 8];
                        mem[write_word] = merged;
                    end else begin
                        write_error = 1'b1;
                    end
                    w_q_data[0] = w_q_data[1]; w_q_strb[0] = w_q_strb[1]; w_q_last[0] = w_q_last[1];
                    w_count = w_count - 2'd1;
                    write_word = write_word + 1;
                    write_left = write_left - 9'd1;
                    if (write_left == 0) write_state = RESPOND;
                end else if (write_state == RESPOND && b_count < 2) begin
                    b_q_resp[b_count[0]] = write_error ? SLVERR : OKAY;
                    b_q_id[b_count[0]] = write_id;
                    b_count = b_count + 2'd1;
                    write_state = IDLE;
                end
            end
            now = now + 64'd1;
        end
        arready <= ar_ready; awready <= aw_ready; wready <= w_ready;
        rvalid <= r_valid; rdata <= r_data; rresp <= r_resp; rid <= r_id; rlast <= r_last;
        bvalid <= b_valid; bresp <= b_resp; bid <= b_id;
    end
endmodule
