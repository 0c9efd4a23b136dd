# Multi-stage: build every binary, ship a small runtime image. The image's
# default command is the gateway; compose runs the consumers from the same
# image with another command.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      --bin callstream-gateway --bin callstream-dedup --bin callstream-store \
      --bin callstream-analytics --bin callstream-crm --bin callstream-recordings \
      --bin callstream-replay \
 && for b in gateway dedup store analytics crm recordings replay; do cp target/release/callstream-$b /usr/local/bin/; done

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 callstream \
 && mkdir -p /var/lib/callstream/spool /var/lib/callstream/recordings \
 && chown -R callstream /var/lib/callstream
COPY --from=build /usr/local/bin/callstream-* /usr/local/bin/
USER callstream
# Every binary runs from here, so the relative defaults `spool.dir` (the
# gateway) and `recordings.store.dir` (the archiver) land on the volumes.
# Only settings every binary takes belong in ENV: each refuses settings it
# does not know (tests/deploy.rs holds this file and docker-compose.yml to
# that); the plain GATEWAY_* variables are read by the gateway alone. In a
# container, every binary's /metrics is on :9090, the port published or not.
WORKDIR /var/lib/callstream
ENV GATEWAY_LISTEN=0.0.0.0:8080 GATEWAY_ADMIN_LISTEN=0.0.0.0:9090 METRICS_LISTEN=0.0.0.0:9090 CALLSTREAM_LOG_FORMAT=json
VOLUME /var/lib/callstream/spool /var/lib/callstream/recordings
EXPOSE 8080 9090
CMD ["/usr/local/bin/callstream-gateway"]
