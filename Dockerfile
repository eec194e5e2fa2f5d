# syntax=docker/dockerfile:1
#
# llmreel: recording proxy for LLM APIs.
#
#   docker build -t llmreel .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9464:9464 \
#       -v llmreel-store:/data -v llmreel-ca:/home/llmreel/.mitmproxy llmreel
#
# Inside the container the proxy must listen on 0.0.0.0, otherwise nothing outside the
# container can reach it. llmreel refuses non-loopback binds unless --proxy-auth is set;
# --allow-remote overrides that check. That is only safe because the port is published on
# the host's loopback interface: publish it as 127.0.0.1:8080:8080, never as 8080:8080
# (which would expose an unauthenticated proxy, holding your API keys' traffic, to the
# network). To expose it on purpose, run with --proxy-auth instead of --allow-remote.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the project (distribution "llmreel": the folders proxy and addons install as the one
# import package `llmreel`; console script llmreel). README.md is needed because pyproject.toml names it as the readme.
WORKDIR /tmp/llmreel-src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY addons ./addons
RUN pip install . \
    && cd / \
    && rm -rf /tmp/llmreel-src

# Unprivileged user. Its home holds mitmproxy's CA (~/.mitmproxy); /data holds the store.
RUN groupadd --gid 10001 llmreel \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/llmreel \
       --shell /usr/sbin/nologin llmreel \
    && mkdir -p /data /home/llmreel/.mitmproxy \
    && chown -R 10001:10001 /data /home/llmreel

ENV HOME=/home/llmreel \
    LLMREEL_STORE=/data/store

# Recordings, and the CA certificate clients must trust (keep it stable across upgrades:
# otherwise every client has to trust a new CA). Copy it out with e.g.
#   docker compose cp llmreel:/home/llmreel/.mitmproxy/mitmproxy-ca-cert.pem .
VOLUME ["/data", "/home/llmreel/.mitmproxy"]

USER 10001:10001
WORKDIR /home/llmreel

# 8080: the proxy. 9464: Prometheus metrics (/metrics).
EXPOSE 8080 9464

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4).read()"]

# Exec form: llmreel is PID 1 and gets docker stop's SIGTERM itself (it shuts down cleanly).
ENTRYPOINT ["llmreel"]
CMD ["serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0", "--allow-remote"]
