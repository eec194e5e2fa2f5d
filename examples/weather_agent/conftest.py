"""Replaying needs no API key, but the OpenAI SDK refuses to start without one."""

import os

os.environ.setdefault("OPENAI_API_KEY", "sk-replay-needs-no-key")
