"""A loopback simulator of the Threads and Instagram Graph API endpoints threads-poller calls.

Real HTTP (aiohttp.web), the real wire format (Threads under /v1.0, Instagram's content
publishing under /v23.0, on the same port), scripted per-container status sequences, injectable
faults and server-side call accounting. See `server.main` for the CLI, `simulator.instagram` for
what is Instagram's own and where the real API may differ.
"""

from simulator.app import API_PREFIX, build_app
from simulator.instagram import INSTAGRAM_API_PREFIX
from simulator.records import (
    DEFAULT_FAULT_KINDS,
    PLATFORMS,
    PUBLISH_FAULTS,
    ConfigError,
    ContainerCalls,
    Platform,
    PublishFault,
    RequestRecord,
    StatusCall,
    StatusHook,
)
from simulator.server import RunningSimulator, main, run_simulator
from simulator.state import SimulatorState
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
    "API_PREFIX",
    "DEFAULT_FAULT_KINDS",
    "INSTAGRAM_API_PREFIX",
    "PLATFORMS",
    "PUBLISH_FAULTS",
    "ConfigError",
    "ContainerCalls",
    "DropStep",
    "GraphErrorStep",
    "Platform",
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
