# The streamscore worker (and producer) image: `docker compose up` builds it as `streamscore:local`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs: no .venv, .kafka or test data in the image.
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producer ./producer
COPY schemas ./schemas
COPY broker ./broker
RUN pip install . && useradd --create-home --uid 10001 streamscore

USER streamscore
ENTRYPOINT ["streamscore"]
CMD ["worker"]
