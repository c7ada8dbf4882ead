# moduleformer-serve container images.
#   CUDA (default target):  docker build -t moduleformer-serve:cuda .
#   CPU only:               docker build --target cpu -t moduleformer-serve:cpu .
#   Another default model:  docker build --build-arg MODEL=path/in/context/to/checkpoint ...
# The build steps live in scripts/image_build.sh (CI runs it); the final stages hold only
# the staged install: server, CLI, CUDA plugin, bundled libraries, the default model.
# No HEALTHCHECK: Kubernetes probes grpc.health.v1 (deploy/k8s).

ARG CUDA_VERSION=13.0.0
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS build-cuda
WORKDIR /src
COPY . .
RUN CMAKE_ARGS="-DMF_ENABLE_CUDA=ON -DBUILD_TESTING=OFF -DMF_BUILD_BENCH=OFF" scripts/image_build.sh /opt/moduleformer \
    && rm -rf /var/lib/apt/lists/*

FROM debian:12 AS build-cpu
WORKDIR /src
COPY . .
RUN CMAKE_ARGS="-DMF_ENABLE_CUDA=OFF -DBUILD_TESTING=OFF -DMF_BUILD_BENCH=OFF" scripts/image_build.sh /opt/moduleformer \
    && rm -rf /var/lib/apt/lists/*

FROM debian:12-slim AS cpu
ARG MODEL=models/demo
COPY --from=build-cpu /opt/moduleformer/bin /opt/moduleformer/bin
COPY --from=build-cpu /opt/moduleformer/lib /opt/moduleformer/lib
COPY ${MODEL} /opt/moduleformer/share/moduleformer/models/demo
RUN useradd --system --uid 10001 --user-group --no-create-home moduleformer
USER 10001:10001
ENV PATH=/opt/moduleformer/bin:$PATH
EXPOSE 50051 9400 8000
ENTRYPOINT ["moduleformer-server"]
CMD ["--host=0.0.0.0", "--port=50051", "--metrics-port=9400"]

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS cuda
ARG MODEL=models/demo
COPY --from=build-cuda /opt/moduleformer/bin /opt/moduleformer/bin
COPY --from=build-cuda /opt/moduleformer/lib /opt/moduleformer/lib
COPY ${MODEL} /opt/moduleformer/share/moduleformer/models/demo
RUN useradd --system --uid 10001 --user-group --no-create-home moduleformer
USER 10001:10001
ENV PATH=/opt/moduleformer/bin:$PATH
EXPOSE 50051 9400 8000
ENTRYPOINT ["moduleformer-server"]
CMD ["--host=0.0.0.0", "--port=50051", "--metrics-port=9400", "--device=cuda"]
