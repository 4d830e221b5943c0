# bff for production: built without the demo (its provider signs anyone in; it must never ship),
# run on a small Debian image as a non-root user. The demo image is Dockerfile.demo.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY templates templates
COPY static static
COPY benches benches
# A workspace member: cargo reads its manifest even for a build of the server alone.
COPY tests/support tests/support
RUN cargo build --release --locked --no-default-features --bin bff

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home bff
COPY --from=build /src/target/release/bff /usr/local/bin/bff
COPY static /app/static
COPY templates /app/templates
WORKDIR /app
USER 10001
EXPOSE 8080
ENTRYPOINT ["bff"]
CMD ["serve"]
