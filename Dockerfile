# The streamscore worker (and producer) image: `docker compose up` builds it as `streamscore:local`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: no .venv, .kafka or test data in the image.
COPY pyproject.toml README.md ./
# Every package pyproject.toml lists (tests/test_compose.py checks that none is missing).
COPY schemas ./schemas
COPY transport ./transport
COPY artifacts ./artifacts
COPY worker ./worker
COPY producer ./producer
COPY broker ./broker
COPY registry ./registry
COPY streamscore ./streamscore
RUN pip install . && useradd --create-home --uid 10001 streamscore

USER streamscore
ENTRYPOINT ["streamscore"]
CMD ["worker"]
