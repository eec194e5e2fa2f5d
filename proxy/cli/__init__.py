"""The `llmreel` command line, and running mitmproxy with the addon from our own code."""
