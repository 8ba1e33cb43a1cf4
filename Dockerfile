# The tandem image: one binary that is the sidecar (`tandem sidecar`), the Kubernetes injector
# (`tandem injector`) and the CLI. The binary needs only glibc and libgcc_s, which the distroless
# "cc" base provides. Build: docker build -t <registry>/tandem:<version> .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tandem && cp target/release/tandem /tandem

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /tandem /tandem
# Numeric, so Kubernetes can check runAsNonRoot.
USER 65532:65532
ENTRYPOINT ["/tandem"]
