"""The web UI for reviewing agent conversations: `llmreel ui` (see docs/ui.md)."""
