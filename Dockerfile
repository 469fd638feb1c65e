# batchscore as a static binary in an empty image (for Azure Container Apps, Kubernetes, Batch
# container tasks). Build: docker build -t batchscore . ; run: see the README ("Real-time
# scoring", "Trigger from Logic Apps"). `serve` listens on all interfaces here, so it needs
# BATCHSCORE_PUBLIC_URL (the URL callers reach it at, e.g. the Container App's ingress URL):
#   docker run -e BATCHSCORE_PUBLIC_URL=https://... -e BATCHSCORE_API_KEYS=... batchscore
#
# Not built on the development machines (they have no container engine); the build stage uses
# the same command as the README's release build, for musl so the binary links statically.

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked --target x86_64-unknown-linux-musl \
    && cp target/x86_64-unknown-linux-musl/dist/batchscore /batchscore

FROM scratch
# rustls reads the system's roots (Azure Storage, Entra ID, the Batch service).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /batchscore /batchscore
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    BATCHSCORE_LISTEN=0.0.0.0:8080 \
    BATCHSCORE_LOG_FORMAT=json
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/batchscore"]
CMD ["serve"]
