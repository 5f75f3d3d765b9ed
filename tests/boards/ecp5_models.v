// Test models of the ECP5 cells the ULX3S receiver's board top instantiates, written from
// Lattice's descriptions of them (Yosys ships only black boxes of the I/O gearing). They are
// what the ULX3S pin-level test assumes, not an independent check of the silicon.

// input and output buffers (outputs are never tristated by these tops)
module IB (input I, output O);
    assign O = I;
endmodule

module OBZ (input I, input T, output O);
    assign O = I;
endmodule

// Not a PLL: CLKOP is the clock the testbench drives on the oscillator pad (at CLKOP's rate),
// CLKOS is CLKOP divided by CLKOS_DIV / CLKOP_DIV (the two share the VCO); LOCK rises after
// 32 clocks of CLKOP.
module EHXPLLL #(
    parameter CLKI_DIV = 1, CLKFB_DIV = 1, CLKOP_DIV = 8, CLKOS_DIV = 8, CLKOP_CPHASE = 0,
    parameter CLKOS_CPHASE = 0, CLKOP_FPHASE = 0, CLKOS_FPHASE = 0,
    parameter CLKOP_ENABLE = "ENABLED", CLKOS_ENABLE = "ENABLED", FEEDBK_PATH = "CLKOP",
    parameter PLLRST_ENA = "DISABLED", INTFB_WAKE = "DISABLED", STDBY_ENABLE = "DISABLED",
    parameter DPHASE_SOURCE = "DISABLED", OUTDIVIDER_MUXA = "DIVA", OUTDIVIDER_MUXB = "DIVB",
    parameter OUTDIVIDER_MUXC = "DIVC", OUTDIVIDER_MUXD = "DIVD"
) (
    input CLKI, input CLKFB, input RST, input STDBY, input PHASESEL0, input PHASESEL1,
    input PHASEDIR, input PHASESTEP, input PHASELOADREG, input PLLWAKESYNC, input ENCLKOP,
    input ENCLKOS, output CLKOP, output reg CLKOS, output reg LOCK
);
    localparam RATIO = CLKOS_DIV / CLKOP_DIV;
    integer count = 0;
    reg [5:0] clocks = 6'd0;
    initial begin CLKOS = 1'b0; LOCK = 1'b0; end
    assign CLKOP = CLKI;
    always @(posedge CLKI) begin
        if (!clocks[5]) clocks <= clocks + 6'd1;
        LOCK <= clocks[5];
        if (count == RATIO / 2 - 1) begin count <= 0; CLKOS <= ~CLKOS; end
        else count <= count + 1;
    end
endmodule

module ECLKSYNCB (input ECLKI, input STOP, output ECLKO);
    assign ECLKO = ECLKI;
endmodule

// DIV "2.0": CDIVX is the edge clock halved
module CLKDIVF #(parameter DIV = "2.0", parameter GSR = "DISABLED") (
    input CLKI, input RST, input ALIGNWD, output reg CDIVX
);
    initial CDIVX = 1'b0;
    always @(posedge CLKI) CDIVX <= ~CDIVX;
endmodule

// 4:1 input gearing: D is sampled on both edges of ECLK; at each rising edge of SCLK the four
// samples of the last SCLK period are presented, Q0 the earliest. (The SCLK edge follows the
// ECLK edge that made it, so the newest sample is the one that ECLK edge took.)
module IDDRX2F #(parameter GSR = "ENABLED") (
    input D, input SCLK, input ECLK, input RST, input ALIGNWD,
    output reg Q0, output reg Q1, output reg Q2, output reg Q3
);
    reg p0 = 1'b0, p1 = 1'b0, n0 = 1'b0, n1 = 1'b0;
    always @(posedge ECLK) begin p1 <= p0; p0 <= D; end
    always @(negedge ECLK) begin n1 <= n0; n0 <= D; end
    always @(posedge SCLK) begin Q0 <= n1; Q1 <= p1; Q2 <= n0; Q3 <= p0; end
endmodule
