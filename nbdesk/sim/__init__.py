"""The loopback simulator of the Apiframe, APIFree and Gemini APIs (demo mode, tests,
benchmarks)."""

from nbdesk.sim.server import (
    DEMO_KEY,
    FAULT_KINDS,
    ROUTES,
    Faults,
    ManualClock,
    SimConfig,
    SimJobRecord,
    SimStats,
    Simulator,
    run_standalone,
)

__all__ = [
    "DEMO_KEY",
    "FAULT_KINDS",
    "ROUTES",
    "Faults",
    "ManualClock",
    "SimConfig",
    "SimJobRecord",
    "SimStats",
    "Simulator",
    "run_standalone",
]
