# syntax=docker/dockerfile:1
# tagpin: the admission webhook image (manifests/ runs it as `serve`).
#
# Base choice: the default glibc build, shipped on distroless/cc-debian12. That image has glibc,
# libgcc and the CA certificates (/etc/ssl/certs) the registry client trusts, and nothing else (no
# shell, no package manager). The builder is Debian 12 too, so the glibc the binary is linked
# against is the one it runs with. A static musl build on distroless/static would save ~20 MB but
# swaps in musl's allocator, which is markedly slower under tokio's multi-threaded allocation
# pattern, and would ship a binary the test suite never ran (CI tests the glibc build).
#
# Reproducible build: the toolchain image is pinned to an exact Rust release and Debian release,
# dependencies come from Cargo.lock only (--locked), and the same commit builds the same tree.
# Pin the base images by digest too (`image:tag@sha256:…`) when publishing: digests could not be
# looked up from the machine this was written on.

FROM rust:1.95.0-slim-bookworm AS build
# make: jemalloc (the global allocator, Cargo feature `jemalloc`) is built from its C sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make=4.3-4.1 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares this bench target, and cargo refuses a manifest whose targets are missing.
COPY benches ./benches
# The registry and target caches persist between builds on one builder (BuildKit); the binary is
# copied out of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tagpin \
 && cp target/release/tagpin /tagpin

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tagpin /usr/local/bin/tagpin
# distroless "nonroot" (65532), numeric so the kubelet can check runAsNonRoot.
USER 65532:65532
# 8443: HTTPS admission reviews (/mutate, /enforce); 9090: plain HTTP /metrics, /healthz, /readyz.
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/tagpin"]
CMD ["serve"]
