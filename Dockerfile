# syntax=docker/dockerfile:1
#
# One image for the whole pipeline: every binary of the workspace (the four stages,
# artifact-api and artifactctl) is built once, in one `cargo build`, and copied into one
# small runtime image. The container's command selects the binary:
#
#   docker build -t artifact-pipeline .
#   docker run --rm artifact-pipeline mime-detector --help
#   docker run --rm artifact-pipeline artifactctl topics create
#
# Why one image: the binaries share nearly all their code and dependencies (runtime,
# librdkafka, Avro, HTTP), so one build compiles it once; one tag is deployed and rolled
# back as a unit, and the Helm chart and docker-compose pick the binary per container.
# See docs/DEPLOY.md.
#
# Build needs BuildKit (default in current Docker). The cache mounts keep the cargo
# registry and target directory between builds.
#
# scripts/image builds this file with podman/buildah and no registry, as
# `--target prebuilt-runtime --build-arg RUNTIME_BASE=<a debootstrapped bookworm>`, with the
# binaries compiled on the (Debian bookworm) host in bin/ of its build context. Both final
# stages are runtime-base plus the same binaries in /usr/local/bin.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG RUNTIME_BASE=debian:${DEBIAN_RELEASE}-slim

# ---------------------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# The rust image brings gcc, make, pkg-config, zlib and the OpenSSL headers that
# librdkafka (built from source by rdkafka-sys) and native-tls need.
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p mime-detector -p location-logger -p pdf-parser -p summarizer \
        -p artifact-api -p artifactctl \
 && mkdir -p /out \
 && for bin in mime-detector location-logger pdf-parser summarizer artifact-api artifactctl; do \
        cp "target/release/$bin" /out/; \
    done

# ---------------------------------------------------------------------------- runtime-base
# Everything of the runtime image but the binaries; Tesseract and poppler's pdftoppm for
# pdf-parser's OCR, poppler-data for the text of CID fonts without ToUnicode.
FROM ${RUNTIME_BASE} AS runtime-base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
        tesseract-ocr tesseract-ocr-eng poppler-utils poppler-data \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pipeline \
 && useradd --system --uid 10001 --gid pipeline --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pipeline \
 # The blob store root and the API's read-model directory. A fresh Docker named volume
 # mounted on one takes its ownership, so the non-root user can write to it (Kubernetes:
 # the chart's fsGroup does this).
 && mkdir -p /data/blobs /var/lib/artifact-api \
 && chown 10001:10001 /data/blobs /var/lib/artifact-api

USER 10001:10001
WORKDIR /data
ENV HTTP_ADDR=0.0.0.0:8080 \
    BLOB_STORE_URL=file:///data/blobs \
    RUST_LOG=info
EXPOSE 8080

LABEL org.opencontainers.image.title="artifact-pipeline" \
      org.opencontainers.image.description="Kafka-native artifact pipeline: mime-detector, location-logger, pdf-parser, summarizer, artifact-api, artifactctl" \
      org.opencontainers.image.licenses="Apache-2.0"

# No ENTRYPOINT: the command is the binary to run, with its arguments.
CMD ["artifactctl", "--help"]

# ---------------------------------------------------------------------------- prebuilt-runtime
# scripts/image's target: the binaries from bin/ of the build context.
FROM scratch AS prebuilt
COPY bin/ /out/
FROM runtime-base AS prebuilt-runtime
COPY --from=prebuilt /out/ /usr/local/bin/

# ---------------------------------------------------------------------------- runtime
# The default (last) stage: the binaries from the builder stage.
FROM runtime-base AS runtime
COPY --from=builder /out/ /usr/local/bin/
