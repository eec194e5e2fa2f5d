"""The wire APIs llmreel understands: which provider a request is for, and what its response says."""
