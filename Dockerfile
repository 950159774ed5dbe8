# The gateway image (also runs the simulators: `iso-gateway sim ...`).
#   docker build -t iso-gateway .
#   docker run --rm iso-gateway --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The dialect files: the package carries them (gateway/_specs), no directory to point at.
COPY specs ./specs
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
ENV ISO_GATEWAY__GATEWAY__DATA_DIR=/var/lib/iso-gateway \
    PYTHONUNBUFFERED=1
# Not root: the gateway needs no privilege (its ports are above 1024). The journal lives in
# /var/lib/iso-gateway: mount a volume there, it is what the gateway owes.
RUN useradd --system --uid 10001 --home-dir /var/lib/iso-gateway --create-home gateway
USER gateway
WORKDIR /var/lib/iso-gateway
VOLUME ["/var/lib/iso-gateway"]
# 8583: terminals; 9100: /metrics
EXPOSE 8583 9100
ENTRYPOINT ["iso-gateway"]
CMD ["serve"]
