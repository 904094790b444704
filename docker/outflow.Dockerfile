# syntax=docker/dockerfile:1.7
# The server image: the `outflow` binary (collector, aggregator, ctl, certs,
# import, replay, demo). Build from the repository root:
#   docker build -f docker/outflow.Dockerfile -t outflow:dev .
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
# The whole workspace: cargo needs every member's manifest to resolve it
# (.dockerignore keeps target/, .git and test data out of the context).
COPY . .
# The `dist` profile (release with fat LTO: less CPU per event, a longer
# build). `install -s` strips the binary: 89 MB with the profile's line
# tables, 17 MB without (release, measured on x86_64); panics then show no
# line numbers.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p outflow --bin outflow \
 && install -D -s -m 0755 target/dist/outflow /out/outflow

FROM debian:${DEBIAN}-slim
# ca-certificates: https OTLP endpoints signed by public CAs. /bin/sh stays:
# the Helm chart derives the Raft id from the StatefulSet ordinal with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 outflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/outflow --shell /usr/sbin/nologin outflow \
 && install -d -o 10001 -g 10001 /var/lib/outflow
COPY --from=build /out/outflow /usr/local/bin/outflow
USER 10001:10001
WORKDIR /var/lib/outflow
# gRPC (aggregator 7101, collector 7201) and HTTP APIs (7071, 7271).
EXPOSE 7101 7071 7201 7271
ENTRYPOINT ["/usr/local/bin/outflow"]
CMD ["--help"]
