# The `jct` binary in a small image. Build: docker build -t jct .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p jct-cli

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /var/lib/jct jct
COPY --from=build /src/target/release/jct /usr/local/bin/jct
USER jct
WORKDIR /var/lib/jct
ENV JCT_BIND=0.0.0.0:8000 JCT_TRACE_ROOT=/var/lib/jct/traces LOG_FORMAT=json
EXPOSE 8000
ENTRYPOINT ["jct"]
CMD ["serve"]
