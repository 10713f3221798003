#!/bin/sh
# Entrypoint `sft`: `docker run IMAGE train RECIPE` runs `sft train RECIPE`; a first argument that is a
# program (accelerate, torchrun, python, bash) runs that program instead, for multi-GPU launches.
set -e
case "$1" in
  accelerate|torchrun|python|python3|bash|sh) exec "$@" ;;
  *) exec sft "$@" ;;
esac
