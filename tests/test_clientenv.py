"""What `llmreel run` and `llmreel env` tell a client: base-URL variables for reverse listeners."""

from __future__ import annotations

from llmreel.cli.clientenv import base_url_env
from llmreel.cli.reverse import Reverse
from llmreel.providers import DEFAULT_HOSTS, HostMap, parse_host_mappings

LOCAL = "http://127.0.0.1:8081"


def host_map(items: list[str]) -> HostMap:
    """What `--provider-host` items make of the defaults."""
    return DEFAULT_HOSTS.merged(parse_host_mappings(items))


def test_known_hosts_get_their_sdks_variable() -> None:
    env, advice = base_url_env(
        [
            (Reverse("https://api.openai.com", 8081), "http://127.0.0.1:8081"),
            (Reverse("https://api.anthropic.com", 8082), "http://127.0.0.1:8082"),
            (Reverse("https://generativelanguage.googleapis.com", 8083), "http://127.0.0.1:8083"),
            (Reverse("https://us-central1-aiplatform.googleapis.com", 8084), "http://127.0.0.1:8084"),
        ]
    )
    assert env == {
        "OPENAI_BASE_URL": "http://127.0.0.1:8081/v1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:8082",
        "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:8083",
        "GOOGLE_VERTEX_BASE_URL": "http://127.0.0.1:8084",
    }
    assert advice == []


def test_provider_host_maps_an_unknown_host_to_its_variable() -> None:
    listener = [(Reverse("https://llm.internal:8443", 8081), LOCAL)]
    env, advice = base_url_env(listener, host_map(["llm.internal=openai"]))
    assert (env, advice) == ({"OPENAI_BASE_URL": f"{LOCAL}/v1"}, [])
    env, advice = base_url_env(listener, host_map(["llm.internal:8443=anthropic"]))
    assert (env, advice) == ({"ANTHROPIC_BASE_URL": LOCAL}, [])


def test_an_unknown_host_gets_advice_instead_of_silence() -> None:
    env, advice = base_url_env([(Reverse("https://llm.internal", 8081), LOCAL)])
    assert env == {}
    (line,) = advice
    assert f"set your client's base URL to {LOCAL}" in line
    assert "https://llm.internal" in line and "--provider-host llm.internal=openai" in line


def test_a_provider_without_a_variable_and_a_second_listener_get_advice() -> None:
    env, advice = base_url_env(
        [
            (Reverse("https://api.groq.com", 8081), "http://127.0.0.1:8081"),
            (Reverse("https://api.openai.com", 8082), "http://127.0.0.1:8082"),
            (Reverse("https://llm.internal", 8083), "http://127.0.0.1:8083"),
        ],
        host_map(["llm.internal=openai"]),
    )
    assert env == {"OPENAI_BASE_URL": "http://127.0.0.1:8082/v1"}
    groq, second = advice
    assert "http://127.0.0.1:8081 " in groq and "no SDK base-URL variable for groq" in groq
    assert "http://127.0.0.1:8083/v1 " in second and "OPENAI_BASE_URL already points" in second
