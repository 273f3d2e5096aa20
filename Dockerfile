# fnlb container image. Not built on the development machine (it has no Docker daemon); build it
# with: docker build -t fnlb:latest .
#
#   docker run -d --name fnlb -p 8081:8081 fnlb:latest --nodes <node1>,<node2>
#
# Any fnlb flag works after the image name, as with the original's image.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# A release build without debug info, stripped: the image carries only the binary.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN cargo build --release --locked -p fnlb \
 && cp target/release/fnlb /fnlb

# glibc and libgcc, no shell, no package manager; runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /fnlb /usr/local/bin/fnlb
USER nonroot:nonroot
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/fnlb"]
