# One image for every service of docker-compose.yml: API, workers, beat, Flower, migrations.
#   docker build -t celery-sagas .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The working directory is the app (celery -A worker, uvicorn); the package, its Alembic
    # migrations (workflows/store/migrations) included, is installed by pip below.
    PYTHONPATH=/app \
    SAGA_DATA_DIR=/tmp/saga-data

WORKDIR /app
COPY . .
# `pip install .` brings the dependencies and the `sagas` console script.
RUN pip install . \
    && useradd --create-home --uid 10001 sagas
USER sagas

EXPOSE 8000 5555
CMD ["uvicorn", "api:app", "--host", "0.0.0.0", "--port", "8000"]
