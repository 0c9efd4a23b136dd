# Multi-stage: build every binary, ship a small runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin callstream-gateway \
 && cp target/release/callstream-gateway /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 callstream
COPY --from=build /usr/local/bin/callstream-gateway /usr/local/bin/
RUN mkdir -p /var/lib/callstream/spool && chown -R callstream /var/lib/callstream
USER callstream
ENV GATEWAY_LISTEN=0.0.0.0:8080 CALLSTREAM_LOG_FORMAT=json \
    CALLSTREAM_SPOOL__DIR=/var/lib/callstream/spool
VOLUME /var/lib/callstream/spool
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/callstream-gateway"]
