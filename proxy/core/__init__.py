"""The core: what to do with one request. Keys, modes, secrets and masking, errors, diffs, single flight. Pure: no mitmproxy, no lmdb."""
