FROM python:3.11-slim

WORKDIR /opt/dicom-router
COPY pyproject.toml README.md ./
COPY router ./router
COPY pipelines ./pipelines
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data dicom-router \
 && mkdir -p /data /etc/dicom-router \
 && chown dicom-router /data
COPY examples/docker/router.toml /etc/dicom-router/router.toml

USER dicom-router
VOLUME ["/data"]
EXPOSE 11112
# SIGTERM: stop accepting, let open associations finish (router.shutdown_grace_seconds), exit 0;
# give `docker stop -t` more than that grace period.
STOPSIGNAL SIGTERM
# /healthz on the admin port, which the image's configuration binds to the container's loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["dicom-router"]
CMD ["serve", "-c", "/etc/dicom-router/router.toml"]
