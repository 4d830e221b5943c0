# bff: build with the Rust toolchain, run on a small Debian image as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY templates templates
COPY static static
COPY benches benches
RUN cargo build --release --locked --bin bff

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
