"""Credential masking: headers, query strings, free text; and the audit sees the same shapes.

The key examples are literal, written from each provider's documented format, not built from
llmreel's own patterns: a shape the table lacks must make these tests fail.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmreel.core.audit import find
from llmreel.core.credentials import is_secret_header, is_secret_name
from llmreel.core.redact import (
    KEY_HINTS,
    credential_of,
    mask_header_value,
    mask_headers,
    mask_query,
    scrub_text,
)

# (provider, an example of its key or token format), as they appear in the wild.
KEYS = [
    ("OpenAI project key", "sk-proj-Zq8xT3vB7nM2kL9pR4sW6yU1hJ5gF0dA_b3c4D5e6F7g8H9i0JkLmNoPq"),
    ("OpenAI service account key", "sk-svcacct-Q1w2E3r4T5y6U7i8O9p0AaSsDdFfGgHhJjKkLl"),
    ("OpenAI admin key", "sk-admin-M4n5B6v7C8x9Z0l1K2j3H4g5F6d7S8a9Qw"),
    ("OpenAI legacy key", "sk-4fGh7JkL9mNpQ2rStUvWxYz0aBcDeFgHiJkLmNoPqRsTuV"),
    ("Anthropic API key", "sk-ant-api03-Yw4eR7tU2iO9pA3sD6fG1hJ8kL5zX0cVbNm-Qa1Ws2Ed3Rf4Tg5Yh6AA"),
    ("Anthropic admin key", "sk-ant-admin01-Kj7Hg6Fd5Sa4Qw3Er2Ty1Ui0OpLkJhGfDsAzXc-AA"),
    ("OpenRouter key", "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"),
    ("Google API key", "AIzaSyC9xK2mN7bV4cX1zL8kJ5hG3fD6sA0qW2e"),
    ("Groq key", "gsk_8Hj2Kl4Mn6Pq8Rs0Tu2Vw4Xy6Za8Bc0De2Fg4Hi6Jk8Lm0No"),
    ("xAI key", "xai-Tq3Wv5Xy7Za9Bc1De3Fg5Hi7Jk9Lm1No3Pq5Rs7Tu9Vw1Xy3Za5Bc7De9Fg1Hi3J"),
    ("Hugging Face token", "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"),
    ("AWS access key id", "AKIAIOSFODNN7EXAMPLE"),
    ("AWS temporary key id", "ASIAY34FZKBOKMUTVV7A"),
    ("GitHub classic token", "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ12"),
    ("GitHub OAuth token", "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
    ("GitHub fine-grained token",
     "github_pat_11ABCDEFG0123456789abc_0a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuVwXyZ0123456789AbCdEfGhIj"),
    ("Stripe live secret key", "sk_live_51H8x2KLm4Np6Qr8St0Uv2Wx4Yz6Ab8Cd0Ef2Gh4Ij6Kl8Mn"),
    ("Stripe test secret key", "sk_test_4eC39HqLyjWDarjtT1zdp7dX"),
    ("Stripe restricted key", "rk_live_51H8x2KLm4Np6Qr8St0Uv2Wx4Yz6Ab8Cd0Ef2Gh4Ij"),
    ("Slack bot token", "xoxb-2048123456-4096123456789-Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8"),
    ("Slack user token", "xoxp-2048123456-2048654321-4096123456789-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d"),
    ("Slack app token", "xapp-1-A0123456789-4096123456789-0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b"),
    ("JSON Web Token",
     "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
     ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
]  # fmt: skip

PEM_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----"
)
PEM_KEYS = [
    PEM_KEY,
    PEM_KEY.replace("RSA PRIVATE", "PRIVATE"),
    PEM_KEY.replace("RSA PRIVATE", "OPENSSH PRIVATE"),
    PEM_KEY.replace("RSA PRIVATE", "EC PRIVATE"),
    PEM_KEY.replace("RSA PRIVATE", "ENCRYPTED PRIVATE"),
]
_KEY_VALUES = [key for _, key in KEYS]


@pytest.mark.parametrize(("provider", "key"), KEYS, ids=[p for p, _ in KEYS])
def test_every_provider_key_is_masked_in_text_and_found_by_the_audit(provider: str, key: str) -> None:
    text = f'{{"note": "my key is {key} ok"}}'
    scrubbed = scrub_text(text)
    assert key not in scrubbed and "[redacted " in scrubbed, provider
    assert key[4:20] not in scrubbed, f"part of the {provider} is left"
    findings = find(text)
    assert len(findings) == 1, (provider, [str(f) for f in findings])
    assert findings[0].offset == text.index(key)


@pytest.mark.parametrize("pem", PEM_KEYS)
def test_private_key_blocks_are_masked_whole_and_found(pem: str) -> None:
    body = pem.splitlines()[1]
    for text in (f"key:\n{pem}\n", '{"pem": "' + pem.replace("\n", "\\n") + '"}'):
        scrubbed = scrub_text(text)
        assert body not in scrubbed and "[redacted " in scrubbed
        assert scrubbed.count("[redacted ") == 1
        assert [f.label for f in find(text)] == ["private key"]
    truncated = pem[:120]  # a body cut short, with no END line, is still a key
    assert truncated.splitlines()[1][:40] not in scrub_text(truncated)


def test_bearer_tokens_of_any_shape_are_masked() -> None:
    assert "opaque.token-123456789" not in scrub_text("Authorization: Bearer opaque.token-123456789")


@given(st.sampled_from(_KEY_VALUES + PEM_KEYS), st.text(max_size=40), st.text(max_size=40))
def test_keys_are_masked_anywhere_and_hints_cover_every_shape(key: str, before: str, after: str) -> None:
    assert any(h in key for h in KEY_HINTS)
    assert key not in scrub_text(f"{before} {key} {after}")


def test_words_that_merely_look_like_keys_pass_the_audit() -> None:
    clean = "risk-assessment-guidelines-v2 desk-organisation-tips Bearer [redacted 1a2b3c4d]"
    assert find(clean) == []


def test_secret_headers_are_masked_with_a_stable_fingerprint() -> None:
    a = mask_header_value("Authorization", "Bearer sk-one-000000000000000000")
    assert a.startswith("Bearer [redacted ") and "sk-one" not in a
    assert a == mask_header_value("authorization", "Bearer sk-one-000000000000000000")
    assert a != mask_header_value("authorization", "Bearer sk-two-000000000000000000")
    masked = dict(mask_headers([("x-api-key", "k"), ("x-goog-api-key", "g"), ("cookie", "c=1"), ("accept", "*/*")]))
    assert masked["accept"] == "*/*"
    assert all(v.startswith("[redacted ") for k, v in masked.items() if k != "accept")


def test_azure_keys_have_no_shape_and_are_masked_by_header_name() -> None:
    azure = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # 32 hex digits, like any other hex string
    assert scrub_text(azure) == azure
    for name in ("api-key", "Ocp-Apim-Subscription-Key", "x-ms-token-aad-access-token"):
        assert mask_header_value(name, azure).startswith("[redacted ")


SECRET_NAMES = [
    "key", "api_key", "api-key", "apikey", "apiKey", "API_KEY", "x-api-key", "key_id",
    "subscription-key", "subscription_key", "SubscriptionKey", "Ocp-Apim-Subscription-Key",
    "token", "api_token", "apiToken", "access_token", "access-token", "accessToken", "id_token",
    "refresh_token", "X-Amz-Security-Token", "authtoken",
    "secret", "client_secret", "client-secret", "clientSecret", "password", "db_password",
    "passwd", "auth", "oauth", "authorization", "x-auth", "sig", "signature", "X-Amz-Signature",
    "X-Amz-Credential", "credential",
]  # fmt: skip
PLAIN_NAMES = [
    "alt", "api-version", "model", "max_tokens", "maxTokens", "max_output_tokens", "tokens",
    "pageToken", "page_token", "nextPageToken", "next_token", "continuation-token", "author",
    "authority", "design", "signal", "keywords", "keys", "hotkeys", "secrets_count",
    "passage", "x-ratelimit-remaining-tokens", "anthropic-ratelimit-output-tokens-limit",
    "www-authenticate", "content-type", "user-agent",
]  # fmt: skip


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_credential_names_are_secret_in_queries_and_headers(name: str) -> None:
    assert is_secret_name(name) and is_secret_header(name)
    masked = dict(mask_query([(name, "s3cr3t-value"), ("alt", "sse")]))
    assert masked[name].startswith("[redacted ") and masked["alt"] == "sse"


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_other_names_are_not_secret(name: str) -> None:
    # A name wrongly taken for a credential is left out of the cache key: requests that differ
    # only there (max_tokens, a page token) would replay each other's answers.
    assert not is_secret_name(name) and not is_secret_header(name)


def test_the_usual_credential_headers_stay_secret() -> None:
    for name in ("authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key",
                 "cookie", "set-cookie", "x-amz-security-token", "ocp-apim-subscription-key",
                 "x-auth-token", "x-portkey-api-key", "helicone-auth", "private-token"):  # fmt: skip
        assert is_secret_header(name), name


def test_credential_of_finds_the_api_key_wherever_it_is() -> None:
    assert credential_of([("Authorization", "Bearer sk-a")], []) == "sk-a"
    assert credential_of([("x-api-key", "sk-ant")], []) == "sk-ant"
    assert credential_of([], [("key", "AIza1")]) == "AIza1"
    assert credential_of([], [("subscription-key", "azure1")]) == "azure1"
    assert credential_of([("accept", "x")], [("alt", "sse")]) is None


def test_key_prefixes_echoed_in_error_messages_are_masked() -> None:
    message = "Incorrect API key provided: sk-proj-Zq8xT3vB7nM2****************wxyz."
    assert "Zq8xT3vB7nM2" not in scrub_text(message)
