FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv

# Dependencies first, in their own layer, rebuilt only when the lock changes: exactly the
# versions and files in requirements.lock (`make lock` writes it from pyproject.toml), each
# checked against its sha256, the build backend included.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The gateway itself, with nothing resolved or downloaded: its dependencies are all there.
COPY pyproject.toml README.md ./
COPY app ./app
COPY config ./config
RUN pip install --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --no-create-home gateway

USER gateway
ENV HOST=0.0.0.0 PORT=8000 WORKERS=2
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=2)"]

CMD ["embeddings-gateway"]
