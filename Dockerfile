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
STOPSIGNAL SIGTERM
ENTRYPOINT ["dicom-router"]
CMD ["serve", "-c", "/etc/dicom-router/router.toml"]
