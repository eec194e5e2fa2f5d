"""What a client needs to go through llmreel: the CA, a trust bundle, and environment variables."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import certifi

if TYPE_CHECKING:
    from llmreel.cli.reverse import Reverse

CA_BASENAME = "mitmproxy"
BUNDLE_NAME = "llmreel-ca-bundle.pem"
CA_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
# Base-URL variables the official SDKs read, per reverse-proxy upstream host.
BASE_URL_VARS = {
    "api.openai.com": ("OPENAI_BASE_URL", "/v1"),
    "api.anthropic.com": ("ANTHROPIC_BASE_URL", ""),
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
    proxy_url: str, bundle: Path, reverse: Iterable[tuple[Reverse, str]] = ()
) -> dict[str, str]:
    """Environment for a client process. `reverse` pairs each listener with its local URL."""
    env = {name: proxy_url for name in PROXY_VARS}
    # An inherited NO_PROXY (often "localhost,127.0.0.1") would send local model servers, and
    # anything else it names, around the recorder.
    env["NO_PROXY"] = ""
    env["no_proxy"] = ""
    for name in CA_VARS:
        env[name] = str(bundle)
    for listener, local_url in reverse:
        host = listener.upstream.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
        if host in BASE_URL_VARS:
            var, suffix = BASE_URL_VARS[host]
            env[var] = local_url + suffix
    return env


def export_lines(env: dict[str, str]) -> str:
    import shlex

    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
