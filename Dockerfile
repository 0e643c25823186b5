# snowgate: build with the locked dependencies, run as a non-root user on a slim base.
# The embedded defaults work with a volume at /var/lib/snowgate (SQLite ledger, local stage,
# DuckDB); production backends are configured through SNOWGATE_* variables (see README).

FROM rust:1.95-slim-bookworm AS build
# DuckDB and the allocator are C/C++ built from source.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs rustfmt.toml ./
COPY src ./src
COPY migrations ./migrations
COPY tests ./tests
COPY benches ./benches
RUN cargo build --release --locked --bin snowgate \
    && install -m 0755 target/release/snowgate /usr/local/bin/snowgate

FROM debian:bookworm-slim
# CA certificates for S3 and Snowflake over TLS; curl for the health check.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/snowgate --create-home snowgate \
    && install -d -o 10001 -g 10001 /var/lib/snowgate/data
COPY --from=build /usr/local/bin/snowgate /usr/local/bin/snowgate
USER 10001:10001
WORKDIR /var/lib/snowgate
ENV SNOWGATE_SERVER__LISTEN=0.0.0.0:8080 \
    SNOWGATE_SERVER__DATA_DIR=/var/lib/snowgate/data
VOLUME ["/var/lib/snowgate/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/snowgate"]
CMD ["serve"]
