# One image for every MinT service; compose.yaml picks the service with `mint serve <service>`.
FROM python:3.11-slim

WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# The CPU build of torch first, so the project's dependencies do not pull a CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY mint mint
COPY services services
COPY kernels kernels
COPY migrations migrations
RUN pip install -e .

ENTRYPOINT ["mint"]
CMD ["serve", "--help"]
