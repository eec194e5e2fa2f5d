"""The engine: what happens to one LLM call, from request to log, with no mitmproxy in sight.

`Engine` owns the store, single flight, lookup policy, recording and accounting; the mitmproxy
addon (`llmreel.addons.recorder`) translates flows into its calls. Tests drive it directly.
"""

from llmreel.engine.engine import Engine, RequestHead, ResponseInfo
from llmreel.engine.flowstate import FlowState
from llmreel.engine.options import DEFAULTS, OPTIONS, ConfigError, Option

__all__ = [
    "DEFAULTS",
    "OPTIONS",
    "ConfigError",
    "Engine",
    "FlowState",
    "Option",
    "RequestHead",
    "ResponseInfo",
]
