"""llmreel: a recording proxy for LLM APIs."""
