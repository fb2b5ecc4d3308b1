# syntax=docker/dockerfile:1
#
# ai-lb: Caddy v2.11.9 with the ai-lb modules, built with xcaddy.
#
#   docker build -f xcaddy.Dockerfile -t ai-lb .
#
# The same image runs the balancer (the default command) and, with another
# command, a simulated node or a registration sidecar:
#
#   caddy ai-lb simnode --listen 0.0.0.0:9000 --register --advertise http://node1:9000 --id node1
#   caddy ai-lb register --url http://vllm:8000
#
# See DEPLOYMENT.md.

# ---------------------------------------------------------------------------
# Builder: scripts/build.sh runs `go tool xcaddy` (pinned in go.mod), so it
# needs Go >= 1.26 and the repository's go.mod/go.sum. caddy:*-builder images
# carry xcaddy but may ship an older Go, hence the official Go image. The
# Debian-based image has the bash and diffutils that scripts/build.sh uses
# (GO_IMAGE pins another Go 1.26+ image, e.g. golang:1.26-bookworm).
# ---------------------------------------------------------------------------
ARG GO_IMAGE=golang:1.26
FROM ${GO_IMAGE} AS builder

WORKDIR /src

# A static binary, so that it runs on the alpine-based final image.
ENV CGO_ENABLED=0

COPY go.mod go.sum ./
# The root package (module.go) and every package it imports. A new package
# imported by the module must be added here: deploy/dockerfile_test.go fails
# until it is.
COPY *.go ./
COPY cli/ cli/
COPY gateway/ gateway/
COPY health/ health/
COPY hedging/ hedging/
COPY internal/ollamaapi/ internal/ollamaapi/
COPY registry/ registry/
COPY request/ request/
COPY selection/ selection/
COPY simnode/ simnode/
# build.sh checks the binary with `ai-lb validate --config Caddyfile.example`.
COPY scripts/ scripts/
COPY Caddyfile.example ./

# Builds /out/ai-lb, then runs `ai-lb version`, `list-modules` (the ai-lb
# modules must be present) and `validate --config Caddyfile.example`.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    OUTPUT=/out/ai-lb bash scripts/build.sh

# ---------------------------------------------------------------------------
# Final image: the official Caddy image with its binary replaced.
# ---------------------------------------------------------------------------
FROM caddy:2.11.9-alpine

COPY --from=builder /out/ai-lb /usr/bin/caddy
COPY Caddyfile.example /etc/caddy/Caddyfile

# The caddy image runs as root; ai-lb runs as an unprivileged user. Port
# 8000 needs no capability. /config and /data (XDG_CONFIG_HOME and
# XDG_DATA_HOME in the base image) must be writable: Caddy autosaves the
# running config to /config/caddy/autosave.json.
RUN addgroup -S -g 10001 ailb \
 && adduser -S -D -H -u 10001 -G ailb -h /srv -s /sbin/nologin ailb \
 && mkdir -p /config/caddy /data/caddy \
 && chown -R 10001:10001 /config /data \
 && caddy version \
 && caddy list-modules | grep -qx 'http.handlers.ai_lb'

# REDIS_URL: the node registry; the Caddyfile reads {env.REDIS_URL} and the
#   `caddy ai-lb ...` subcommands default --redis to it. A deployment sets
#   its own, with its Redis user and password (DEPLOYMENT.md).
# CADDY_ADMIN: Caddy's default admin address (read by Caddy at startup when
#   the config sets none, and by `caddy reload` run in the container). The
#   admin API has no authentication, so it listens on the container's
#   loopback: `docker compose exec load_balancer caddy reload ...` reaches
#   it, other containers do not. Never make it 0.0.0.0 on a network that
#   clients or agents share, and never publish port 2019.
ENV REDIS_URL=redis://redis:6379 \
    CADDY_ADMIN=localhost:2019

USER 10001:10001

# The OpenAI API. (The base image also EXPOSEs 80, 443 and 2019; EXPOSE is
# metadata only, but never run this image with `docker run -P`.)
EXPOSE 8000

# /health answers 200 while at least min_nodes (default 1) nodes are live,
# 503 otherwise: "healthy" means "can serve requests".
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD wget -q -O /dev/null http://127.0.0.1:8000/health || exit 1

CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
