# mcrouter in a container.
#
#   docker build -t mcrouter .
#   docker run --rm -p 8080:8080 -v "$PWD/router.yaml:/etc/mcrouter/router.yaml:ro" mcrouter
#
# The config is read from /etc/mcrouter/router.yaml (mount yours there);
# arguments after the image name are added to `mcrouter run`, e.g. `-n 4`
# (a repeated flag such as `-l` replaces the default below).  The router runs
# as PID 1, an unprivileged user; `docker kill -s HUP` reloads the config,
# `docker stop` drains (give it --stop-timeout above --graceful-timeout).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mcrouter
COPY router.yaml /etc/mcrouter/router.yaml
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["mcrouter", "run", "-f", "/etc/mcrouter/router.yaml", "-l", "tcp://:8080"]
