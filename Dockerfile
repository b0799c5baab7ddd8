# The one image every Quanta component runs from: `quanta frontend|scheduler|agent ...`
# (deploy/compose/compose.yaml, deploy/kubernetes/). Build from the checkout root:
#   docker build -t quanta/quanta:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY quanta ./quanta
COPY controlplane ./controlplane
COPY scheduler ./scheduler
COPY agents ./agents
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/quanta quanta
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/quanta
ENV PYTHONUNBUFFERED=1 \
    QUANTA_LOG_FORMAT=json
# 7000: gRPC API (quanta frontend --listen); 9100: Prometheus /metrics (--metrics-port).
EXPOSE 7000 9100
ENTRYPOINT ["quanta"]
CMD ["--help"]
