"""Sending recorded requests again, on purpose: the playground's runs and `llmreel probe`.

Pure parts: `bodies` (where things are in each wire API's request), `perturb` (the probe's
seeded perturbations), `draft` (the editable request and its key). I/O parts: `proxyproc` (an
llmreel proxy to send through), `send` (one request through it), `runs` (runs found in the log)
and `probe` (the stability probe), used by both the CLI and the UI.
"""
