# syntax=docker/dockerfile:1
# Statecast image: profile-api, profile-consumer and profile-operator in one distroless image
# (ghcr.io/statecast/statecast, see docs/contracts.md), running as uid/gid 65532.
#
#   docker build -t ghcr.io/statecast/statecast:dev .

FROM rust:1.95-bookworm AS builder
# rdkafka builds its bundled librdkafka (and a static zlib) with the image's make and C compiler.
# TLS and SASL/SCRAM link the system OpenSSL 3 (rdkafka feature `ssl`; libssl-dev is in this
# image), so at run time the binaries need glibc, libgcc and libssl3/libcrypto3: all in
# distroless cc-debian12 (its "base" layer carries Debian 12's OpenSSL 3.0, the same as here).
# scripts/image-libs refuses a binary that needs anything else (e.g. cyrus-sasl).
WORKDIR /src
COPY . .
# Cache the registry and target dir between builds (BuildKit), then copy the binaries out of the
# cache mount so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p profile-api -p profile-consumer -p profile-operator \
    && mkdir -p /out \
    && cp target/release/profile-api target/release/profile-consumer target/release/profile-operator /out/ \
    && scripts/image-libs /out/profile-api /out/profile-consumer /out/profile-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.source="https://github.com/statecast/statecast" \
      org.opencontainers.image.description="Statecast: profile-api, profile-consumer, profile-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/profile-api /usr/local/bin/profile-api
COPY --from=builder /out/profile-consumer /usr/local/bin/profile-consumer
COPY --from=builder /out/profile-operator /usr/local/bin/profile-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/profile-api"]
