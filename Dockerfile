# squat-serve GPU image: squat-server, squat-cli and squat-bench on the NVIDIA CUDA runtime.
#
#   docker build -t squat-serve:0.1.0 .
#   docker run --gpus 1 --stop-timeout 45 -v /path/to/checkpoint:/models:ro \
#     -p 50051:50051 -p 8000:8000 squat-serve:0.1.0
#
# docs/deploy.md has the details (Helm chart, sizing). The build stage mirrors the GPU
# machine's verified recipe (../shared/device/README.md): Ubuntu 24.04, CUDA 13.0, LibTorch
# 2.11+cu130, the project's CMake build with tests off. deploy/ci/check_dockerfile.sh lints
# this file and keeps it consistent with the CMake build and the Helm chart.

ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu130/libtorch-shared-with-deps-2.11.0%2Bcu130.zip
# 90: H100 / H200. Several are allowed, e.g. "80;90".
ARG CUDA_ARCHITECTURES=90

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The libraries of tools/install_deps.sh that the server and the clients link (no test ones).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config ca-certificates curl unzip \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      libspdlog-dev libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libpcre2-dev \
 && rm -rf /var/lib/apt/lists/*

RUN curl -fsSL --retry 3 -o /tmp/libtorch.zip "${LIBTORCH_URL}" \
 && unzip -q /tmp/libtorch.zip -d /opt \
 && rm /tmp/libtorch.zip

WORKDIR /src
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUAT_BUILD_TESTS=OFF \
      -DCMAKE_PREFIX_PATH=/opt/libtorch -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build build --target squat-server squat-cli squat-bench

# The binaries, plus the system libraries they load that the runtime base lacks (gRPC,
# protobuf, abseil, spdlog, prometheus-cpp, civetweb, ...). LibTorch is copied whole; glibc,
# libstdc++ and CUDA come with the runtime base (and the driver with the NVIDIA runtime).
RUN mkdir -p /out/bin /out/lib \
 && cp build/server/squat-server build/client/squat-cli build/client/squat-bench /out/bin/ \
 && ldd /out/bin/* | awk '$2 == "=>" && $3 ~ /^\/(usr\/)?lib\// {print $3}' | sort -u \
    | grep -vE '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+)\.so' \
    | xargs -r cp -L -t /out/lib/

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}

# The same UID/GID as the Helm chart's podSecurityContext.
RUN groupadd --system --gid 10001 squat \
 && useradd --system --uid 10001 --gid squat --home-dir /home/squat --create-home \
      --shell /usr/sbin/nologin squat

COPY --from=build /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build /out/lib /opt/squat-serve/lib
COPY --from=build /out/bin /opt/squat-serve/bin
RUN echo /opt/squat-serve/lib > /etc/ld.so.conf.d/squat-serve.conf && ldconfig

ENV PATH=/opt/squat-serve/bin:${PATH}
# The checkpoint directory (config.json, *.safetensors, tokenizer.json), mounted read-only.
VOLUME ["/models"]
# gRPC (squat.v1.GenerationService, grpc.health.v1, reflection) and Prometheus /metrics.
EXPOSE 50051 8000

USER 10001:10001
WORKDIR /home/squat

# squat-server drains on SIGTERM (health NOT_SERVING, new calls refused, in-flight ones get
# --drain-timeout-s): give `docker stop` more time than that (--stop-timeout / -t).
STOPSIGNAL SIGTERM
# grpc.health.v1 through the bundled client; NOT_SERVING while the model loads or drains.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 \
  CMD ["/bin/sh", "-c", "squat-cli health --address 127.0.0.1:50051 --timeout-s 5 | grep -qx SERVING"]

# Exec form: squat-server is PID 1 and receives SIGTERM itself.
ENTRYPOINT ["/opt/squat-serve/bin/squat-server"]
CMD ["--model=/models", "--address=0.0.0.0:50051", "--metrics-port=8000", "--device=cuda"]
