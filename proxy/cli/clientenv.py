"""What a client needs to go through llmreel: the CA, a trust bundle, and environment variables."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import certifi

from llmreel.providers import DEFAULT_HOSTS, HostMap

if TYPE_CHECKING:
    from llmreel.cli.reverse import Reverse

CA_BASENAME = "mitmproxy"
BUNDLE_NAME = "llmreel-ca-bundle.pem"
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
# Base-URL variables the official SDKs read, by the provider a reverse listener's upstream host
# maps to, with the path each SDK expects after the host (google-genai adds its API version).
BASE_URL_VARS: Final[Mapping[str, tuple[str, str]]] = {
    "openai": ("OPENAI_BASE_URL", "/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", ""),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", ""),
    "vertex": ("GOOGLE_VERTEX_BASE_URL", ""),
}
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, BSD
)


def confdir_path(confdir: str) -> Path:
    return Path(os.path.expanduser(confdir))


def private_dir(confdir: str) -> Path:
    """The CA directory, created if needed and made private to the user (0700, whatever the umask)."""
    directory = confdir_path(confdir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    return directory


def ensure_ca(confdir: str) -> Path:
    """Create mitmproxy's CA in `confdir` if it is not there yet; return the certificate's path."""
    from mitmproxy.certs import CertStore

    directory = private_dir(confdir)
    CertStore.from_store(directory, CA_BASENAME, 2048)
    return directory / f"{CA_BASENAME}-ca-cert.pem"


def system_roots() -> Path:
    """The platform's trusted roots, or certifi's when the platform has no bundle file."""
    default = ssl.get_default_verify_paths().cafile
    for candidate in (default, *_SYSTEM_BUNDLES):
        if candidate and Path(candidate).is_file() and not candidate.endswith(BUNDLE_NAME):
            return Path(candidate)
    return Path(certifi.where())


def write_bundle(confdir: str) -> Path:
    """System roots plus the mitmproxy CA in one PEM, so a client trusts both llmreel and the
    hosts it reaches directly (many clients *replace* their trust store with SSL_CERT_FILE)."""
    ca = ensure_ca(confdir)
    bundle = confdir_path(confdir) / BUNDLE_NAME
    content = system_roots().read_bytes().rstrip(b"\n") + b"\n\n# llmreel / mitmproxy CA\n"
    content += ca.read_bytes()
    if not bundle.exists() or bundle.read_bytes() != content:
        tmp = bundle.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o600)
        tmp.replace(bundle)
    return bundle


def client_env(
    proxy_url: str, bundle: Path, base_urls: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a client process; `base_urls` comes from `base_url_env`."""
    env = {name: proxy_url for name in PROXY_VARS}
    # An inherited NO_PROXY (often "localhost,127.0.0.1") would send local model servers, and
    # anything else it names, around the recorder.
    env["NO_PROXY"] = ""
    env["no_proxy"] = ""
    for name in CA_VARS:
        env[name] = str(bundle)
    env.update(base_urls or {})
    return env


def base_url_env(
    reverse: Iterable[tuple[Reverse, str]], hosts: HostMap = DEFAULT_HOSTS
) -> tuple[dict[str, str], list[str]]:
    """SDK base-URL variables for reverse listeners, each paired with its local URL.

    The variable follows the provider `hosts` maps the upstream host to (`--provider-host`
    included). Returns the variables, and one line of advice per listener that none covers.
    """
    env: dict[str, str] = {}
    advice: list[str] = []
    for listener, local_url in reverse:
        parts = urlsplit(listener.upstream)
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
        provider = hosts.provider_for(host)
        var, suffix = BASE_URL_VARS.get(provider or "", ("", ""))
        if var and var not in env:
            env[var] = local_url + suffix
            continue
        if var:
            why = f"{var} already points at the first {provider} listener"
        elif provider:
            why = f"llmreel knows no SDK base-URL variable for {provider}"
        else:
            why = (
                f"llmreel does not know which API {parts.hostname} serves (name it with "
                f"--provider-host {parts.hostname}=openai, anthropic or gemini)"
            )
        advice.append(
            f"llmreel: set your client's base URL to {local_url}{suffix} to go through the "
            f"reverse listener for {listener.upstream}: {why}."
        )
    return env, advice


def export_lines(env: dict[str, str]) -> str:
    import shlex

    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
