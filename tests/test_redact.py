"""Credential masking: headers, query strings, free text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmreel.core.redact import (
    KEY_HINTS,
    credential_of,
    find_secrets,
    mask_header_value,
    mask_headers,
    mask_query,
    scrub_text,
)

KEYS = [
    "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
    "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
    "sk-abcdefghijklmnopqrstuvwxyz",
    "AIzaSyA1234567890abcdefghijklmnopqrstu",
    "gsk_abcdefghijklmnopqrstuvwxyz0123",
    "xai-abcdefghijklmnopqrstuvwxyz0123",
    "hf_abcdefghijklmnopqrstuvwxyz012",
    "AKIAABCDEFGHIJKLMNOP",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
]


@pytest.mark.parametrize("key", KEYS)
def test_every_key_shape_is_masked_in_text(key: str) -> None:
    text = f'{{"note": "my key is {key} ok"}}'
    scrubbed = scrub_text(text)
    assert key not in scrubbed and "[redacted " in scrubbed
    assert find_secrets(text) == [key]


def test_bearer_tokens_of_any_shape_are_masked() -> None:
    assert "opaque.token-123456789" not in scrub_text("Authorization: Bearer opaque.token-123456789")


@given(st.sampled_from(KEYS), st.text(max_size=40), st.text(max_size=40))
def test_keys_are_found_anywhere_and_hints_cover_every_shape(key: str, before: str, after: str) -> None:
    assert any(h in key for h in KEY_HINTS)
    assert key not in scrub_text(f"{before} {key} {after}")


def test_secret_headers_are_masked_with_a_stable_fingerprint() -> None:
    a = mask_header_value("Authorization", "Bearer sk-one-000000000000000000")
    assert a.startswith("Bearer [redacted ") and "sk-one" not in a
    assert a == mask_header_value("authorization", "Bearer sk-one-000000000000000000")
    assert a != mask_header_value("authorization", "Bearer sk-two-000000000000000000")
    masked = dict(mask_headers([("x-api-key", "k"), ("x-goog-api-key", "g"), ("cookie", "c=1"), ("accept", "*/*")]))
    assert masked["accept"] == "*/*"
    assert all(v.startswith("[redacted ") for k, v in masked.items() if k != "accept")


def test_query_credentials_are_masked() -> None:
    assert dict(mask_query([("key", "AIzaXYZ"), ("alt", "sse")]))["alt"] == "sse"
    assert "AIzaXYZ" not in dict(mask_query([("key", "AIzaXYZ")]))["key"]


def test_credential_of_finds_the_api_key_wherever_it_is() -> None:
    assert credential_of([("Authorization", "Bearer sk-a")], []) == "sk-a"
    assert credential_of([("x-api-key", "sk-ant")], []) == "sk-ant"
    assert credential_of([], [("key", "AIza1")]) == "AIza1"
    assert credential_of([("accept", "x")], [("alt", "sse")]) is None
