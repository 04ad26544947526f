# dicom-router in a container: docs in examples/docker/README.md.
FROM python:3.11-slim-bookworm

# tini is PID 1: it forwards `docker stop`'s SIGTERM to the router and reaps every exited
# child (the router's receiving and delivery processes included, should the router itself die).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dicom-router
# The dependencies the tests ran against, each checked against its hash; then the router alone.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY router ./router
COPY pipelines ./pipelines
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 --home-dir /data dicom-router \
 && mkdir -p /data /etc/dicom-router \
 && chown dicom-router /data
COPY examples/docker/router.toml /etc/dicom-router/router.toml

USER dicom-router
VOLUME ["/data"]
# 11112: DICOM; 8080: the admin server (/healthz, /readyz, /metrics), for Prometheus and probes.
EXPOSE 11112 8080
# SIGTERM stops accepting and lets open associations finish for router.shutdown_grace_seconds.
# The image's configuration keeps that at 5 s, inside the 10 s `docker stop` waits by default;
# a longer grace needs `docker stop -t` (compose: stop_grace_period) longer than it.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "dicom-router"]
CMD ["serve", "-c", "/etc/dicom-router/router.toml"]
