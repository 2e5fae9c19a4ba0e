# syntax=docker/dockerfile:1
# order-host image: the host binary and the shipped handler components on a slim, non-root base.
#   docker build -t order-host:dev .          (or: minikube image build -t order-host:dev .)
# In Kubernetes the handlers come from the `order-handlers` ConfigMap instead (HANDLERS_DIR points
# there); the baked-in copy serves `docker run` and is the fallback image default.

# --- build: host + xtask (native) and the handler components (wasm32-wasip2) in one target dir.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p host --bin order-host \
 && cargo xtask build-handlers --checker target/release/order-host \
 && mkdir -p /out \
 && cp target/release/order-host /out/ \
 && cp -r target/handlers /out/handlers

# --- runtime: glibc + CA roots + zlib (librdkafka), nothing else; runs as uid 10001, which the
# Deployment's securityContext also names.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 order-host \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin order-host
COPY --from=build /out/order-host /usr/local/bin/order-host
COPY --from=build /out/handlers /opt/order-host/handlers
ENV HTTP_ADDR=0.0.0.0:8080 \
    HANDLERS_DIR=/opt/order-host/handlers \
    HANDLER_CACHE_DIR=/tmp/order-host-cache \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/order-host"]
CMD ["serve"]
