# syntax=docker/dockerfile:1
# loraq image: API, worker and migrations share it. TORCH_INDEX picks the torch build:
#   GPU (default): https://download.pytorch.org/whl/cu128    CPU: https://download.pytorch.org/whl/cpu
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/loraq
ENV PATH=/opt/loraq/bin:$PATH
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY training ./training
COPY loraq ./loraq
# The project pins its dependency ranges in pyproject.toml; torch is pinned above.
# hadolint ignore=DL3013
RUN pip install ".[postgres]"

FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/loraq/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/var/lib/loraq/hf-cache LORAQ_DATA_DIR=/var/lib/loraq
RUN groupadd --system --gid 10001 loraq \
    && useradd --system --uid 10001 --gid loraq --home-dir /var/lib/loraq loraq \
    && mkdir -p /var/lib/loraq && chown 10001:10001 /var/lib/loraq
COPY --from=build /opt/loraq /opt/loraq
COPY --from=build /src/alembic.ini /opt/loraq/alembic.ini
USER 10001:10001
WORKDIR /var/lib/loraq
EXPOSE 8000
CMD ["loraq", "api", "--host", "0.0.0.0", "--port", "8000"]
