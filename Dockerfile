# sft on a CUDA PyTorch base. Build: docker build -t sft .
# Run:   docker run --gpus all -v $PWD/outputs:/app/outputs -e HF_TOKEN sft \
#          accelerate launch --config_file accelerate_configs/single_gpu.yaml -m sft train recipes/gpt2/alpaca-lora.yaml
#        docker run --gpus all sft train recipes/quickstart.yaml      (entrypoint: sft)
# Serve: docker run --gpus all -p 8000:8000 -v $PWD/outputs:/app/outputs sft serve outputs/run --host 0.0.0.0
#        (inside the container the server must listen on every interface; -p publishes it on the host)
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

# TOKENIZERS_PARALLELISM is a switch, not a secret (DL3064 matches the word TOKEN)
# hadolint ignore=DL3064
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

COPY pyproject.toml README.md ./
COPY sft ./sft
RUN pip install --no-cache-dir ".[hub-metrics,serve]"

COPY recipes ./recipes
COPY accelerate_configs ./accelerate_configs
COPY benchmarks ./benchmarks
COPY docker/entrypoint.sh /usr/local/bin/sft-entrypoint

RUN useradd --create-home --uid 1000 sft && chown -R sft /app
USER 1000
EXPOSE 8000

ENTRYPOINT ["/usr/local/bin/sft-entrypoint"]
CMD ["--help"]
