"""A loopback simulator of the Threads Graph API endpoints threads-poller calls.

Real HTTP (aiohttp.web), the real wire format, scripted per-container status sequences,
injectable faults and server-side call accounting. See `server.main` for the CLI.
"""

from simulator.app import build_app
from simulator.server import RunningSimulator, main, run_simulator
from simulator.state import (
    DEFAULT_FAULT_KINDS,
    PUBLISH_FAULTS,
    ConfigError,
    ContainerCalls,
    PublishFault,
    RequestRecord,
    SimulatorState,
    StatusCall,
    StatusHook,
)
from simulator.steps import (
    DropStep,
    GraphErrorStep,
    RawStep,
    SlowStep,
    StatusStep,
    Step,
    StepError,
    parse_step,
    parse_steps,
)

__all__ = [
    "DEFAULT_FAULT_KINDS",
    "PUBLISH_FAULTS",
    "ConfigError",
    "ContainerCalls",
    "DropStep",
    "GraphErrorStep",
    "PublishFault",
    "RawStep",
    "RequestRecord",
    "RunningSimulator",
    "SimulatorState",
    "SlowStep",
    "StatusCall",
    "StatusHook",
    "StatusStep",
    "Step",
    "StepError",
    "build_app",
    "main",
    "parse_step",
    "parse_steps",
    "run_simulator",
]
