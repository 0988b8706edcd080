# The project image: one console script, `dnsqr-pipeline`, whose subcommand each compose service picks
# (ingest, worker, sink, topics). Kafka itself runs from the official apache/kafka image, not from here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# metadata first: the dependency layer is rebuilt only when pyproject.toml changes
COPY pyproject.toml setup.py README.md ./
COPY schemas/ schemas/
COPY nmsgdns/ nmsgdns/
COPY ingest/ ingest/
COPY processors/ processors/
COPY sink/ sink/
COPY dnsqr_pipeline/ dnsqr_pipeline/
# gcc only for the build of the C extensions (nmsgdns/*.c), removed in the same layer
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* /src

# an unprivileged user; /data holds inputs (/data/in) and the sink's rotated files (/data/out)
RUN useradd --create-home --uid 10001 pipeline && mkdir -p /data/in /data/out && chown -R pipeline /data
USER pipeline
WORKDIR /data

ENTRYPOINT ["dnsqr-pipeline"]
CMD ["--help"]
