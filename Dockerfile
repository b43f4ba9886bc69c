# The mds-convert service image: the REST API and the Celery/Spark worker (one image, two commands).
# Slim Python with a Java runtime for Spark; installed from the pinned lock; runs as a non-root user.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64 \
    DATA_DIR=/var/lib/mds-convert

RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 mds \
    && useradd --system --uid 10001 --gid mds --home-dir /home/mds --create-home mds \
    && mkdir -p /var/lib/mds-convert && chown mds:mds /var/lib/mds-convert

WORKDIR /opt/mds-convert
# Dependencies first (cached layer), from the lock: exact versions of the service's closure.
COPY requirements/service.lock requirements/service.lock
RUN pip install --no-deps -r requirements/service.lock

COPY loader/ loader/
COPY app/ app/
COPY worker/ worker/
COPY pyproject.toml README.md ./
RUN pip install --no-deps ./loader . \
    && python -c "import app, worker, mdsloader"

ENV PYSPARK_PYTHON=/usr/local/bin/python \
    SPARK_LOCAL_IP=0.0.0.0
USER mds
EXPOSE 8000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mds-convert", "serve", "--host", "0.0.0.0", "--port", "8000"]
