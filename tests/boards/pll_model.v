// Test model of the iCE40UP5K's SB_PLL40_2F_PAD: not a PLL. Output A is the clock the
// testbench drives on the pad (at the PLL's output rate); output B is A halved, as
// PLLOUT_SELECT_PORTB = "GENCLK_HALF" gives; LOCK rises after 32 clocks of A.
module SB_PLL40_2F_PAD #(
    parameter [6:0] DIVF = 0,
    parameter [5:0] DIVR = 0,
    parameter [2:0] DIVQ = 0,
    parameter [2:0] FILTER_RANGE = 0,
    parameter FEEDBACK_PATH = "SIMPLE",
    parameter PLLOUT_SELECT_PORTA = "GENCLK",
    parameter PLLOUT_SELECT_PORTB = "GENCLK"
) (
    input PACKAGEPIN,
    input RESETB,
    input BYPASS,
    output PLLOUTGLOBALA,
    output PLLOUTGLOBALB,
    output reg LOCK
);
    reg half = 1'b0;
    reg [5:0] clocks = 6'd0;
    initial LOCK = 1'b0;
    always @(posedge PACKAGEPIN) begin
        half <= ~half;
        if (!clocks[5]) clocks <= clocks + 6'd1;
        LOCK <= clocks[5];
    end
    assign PLLOUTGLOBALA = PACKAGEPIN;
    assign PLLOUTGLOBALB = PLLOUT_SELECT_PORTB == "GENCLK_HALF" ? half : PACKAGEPIN;
endmodule
