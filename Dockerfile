# Multi-stage build: compile in the Rust image, run from a slim Debian image as a non-root user.
#   docker build -t ringproxy .
#   docker run --rm -p 3000:3000 -v $PWD/config.toml:/etc/ringproxy/config.toml ringproxy
# io_uring in containers: Docker's default seccomp profile (since 25.0) blocks io_uring_setup;
# ringproxy then falls back to epoll on its own (the log says driver="epoll"). To use io_uring,
# run with a seccomp profile that allows io_uring_setup/enter/register.
# The example config listens on 127.0.0.1; inside a container set [server] host = "0.0.0.0".
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin ringproxy \
    && mkdir -p /etc/ringproxy
COPY --from=build /src/target/release/ringproxy /usr/local/bin/ringproxy
COPY config.toml /etc/ringproxy/config.toml
USER ringproxy
EXPOSE 3000 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ringproxy", "-c", "/etc/ringproxy/config.toml"]
