# The Python service images, one build target each (docker-compose.smap.yml picks it with `target:`):
#   simulator, inference-trigger, analysis-worker (also runs Flower), victoria-consumer, alert-manager,
#   operation-server.
# Build context: the repository root. Every target is the shared `base` stage (pinned requirements, the
# shared package, the unprivileged user) plus its own service folder, so BuildKit builds the base once
# for all six images; only the operation server adds a node stage (npm ci of the page's chart library,
# of which only node_modules reaches its image, no node).
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm
ARG NODE_IMAGE=node:20.18.1-bookworm-slim

FROM ${NODE_IMAGE} AS web
WORKDIR /web
COPY smap-operation-server/web/package.json smap-operation-server/web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 smap \
    && useradd --system --uid 10001 --gid smap --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin smap
# Same pins for every service image (docker/service-pins.txt = requirements.txt minus native/training-only).
COPY docker/service-pins.txt /tmp/service-pins.txt
RUN pip install --no-cache-dir -r /tmp/service-pins.txt && rm /tmp/service-pins.txt
COPY pyproject.toml /tmp/src/pyproject.toml
COPY smap_shared /tmp/src/smap_shared
RUN pip install --no-cache-dir --no-deps /tmp/src && rm -rf /tmp/src
WORKDIR /app

# Replays the SMAP test splits onto Kafka `smap-telemetry`.
FROM base AS simulator
COPY smap-simulator /app/smap-simulator
USER 10001:10001
CMD ["python", "smap-simulator/main.py"]

# Kafka `smap-telemetry` -> one Celery task per frame on its stream's shard queue.
FROM base AS inference-trigger
COPY smap-inference-trigger /app/smap-inference-trigger
USER 10001:10001
CMD ["python", "smap-inference-trigger/main.py"]

# One Celery worker per shard queue (SHARD_INDEX), calling Triton; compose runs Flower on it too.
FROM base AS analysis-worker
COPY smap-analysis-worker /app/smap-analysis-worker
WORKDIR /app/smap-analysis-worker
USER 10001:10001
# One ordered shard queue, one task at a time (prefetch 1, one pool thread): a stream's steps stay in order.
ENV SHARD_INDEX=0
CMD ["sh", "-c", "exec celery -A smap_analysis.celery_app worker -Q smap-inference-shard-${SHARD_INDEX} -c 1 --prefetch-multiplier 1 -n shard${SHARD_INDEX}@%h --pool threads -E"]

# Kafka `smap-inference-results` -> VictoriaMetrics (Prometheus import API).
FROM base AS victoria-consumer
COPY smap-victoria-consumer /app/smap-victoria-consumer
USER 10001:10001
CMD ["python", "smap-victoria-consumer/main.py"]

# Kafka `smap-inference-results` -> alert rules -> PostgreSQL history, Slack/email; API :8002.
FROM base AS alert-manager
COPY smap-alert-manager /app/smap-alert-manager
USER 10001:10001
EXPOSE 8002
CMD ["python", "smap-alert-manager/main.py"]

# Dashboard page, REST API over VictoriaMetrics, WebSocket live stream.
FROM base AS operation-server
COPY smap-operation-server /app/smap-operation-server
COPY --from=web /web/node_modules /app/smap-operation-server/web/node_modules
USER 10001:10001
EXPOSE 8000
CMD ["python", "smap-operation-server/main.py"]
