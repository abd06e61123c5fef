# One image for every service of docker-compose.yml: API, workers, beat, Flower, migrations.
#   docker build -t celery-sagas .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The working directory is the app: the example shop (tasks/), worker.py, api.py and
    # celeryconfig.py are imported from here (celery -A worker, uvicorn api:app). The library,
    # its Alembic migrations (workflows/store/migrations) included, is the wheel pip installs below.
    PYTHONPATH=/app \
    SAGA_DATA_DIR=/tmp/saga-data

WORKDIR /app
COPY . .
# `pip install .` brings the library (`workflows`), the `sagas` console script and, by extra, what
# this deployment uses: psycopg 3, the HTTP API and console, Flower, Kafka, OpenTelemetry (SAGA_TRACING=otel).
RUN pip install ".[postgres,api,flower,kafka,otel]" \
    && useradd --create-home --uid 10001 sagas
USER sagas

EXPOSE 8000 5555
CMD ["uvicorn", "api:app", "--host", "0.0.0.0", "--port", "8000"]
