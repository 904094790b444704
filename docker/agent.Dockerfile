# syntax=docker/dockerfile:1.7
# The endpoint agent image: `outflow-agent`. Build from the repository root:
#   docker build -f docker/agent.Dockerfile -t outflow-agent:dev .
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p outflow-agent --bin outflow-agent \
 && install -D -s -m 0755 target/release/outflow-agent /out/outflow-agent

# glibc + libgcc and nothing else: no shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/outflow-agent /usr/local/bin/outflow-agent
# The agent runs as root with every capability dropped except the probes'
# (NET_ADMIN, NET_RAW, SYS_PTRACE, DAC_READ_SEARCH: see docs/deployment.md);
# the Helm chart's DaemonSet sets that, a plain `docker run` must too:
#   docker run --pid=host --net=host --cap-drop=ALL --cap-add=NET_ADMIN \
#     --cap-add=NET_RAW --cap-add=SYS_PTRACE --cap-add=DAC_READ_SEARCH \
#     --security-opt apparmor=unconfined outflow-agent:dev check
USER 0:0
ENTRYPOINT ["/usr/local/bin/outflow-agent"]
CMD ["check"]
