"""Tools over the whole stack: FLOP counting, compile-only planning, benchmarks."""
