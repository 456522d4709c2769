"""Child-process entry point: run llama.cpp's own HTTP server (xllamacpp) on one GGUF file.

    python -m covey.engine.llamacpp --model PATH --alias ID [--ctx N --parallel N ...]

Protocol with the supervisor, kept tiny on purpose:
- on success the child prints one line `COVEY-ENGINE-LISTENING <url>` on stdout;
- on failure it exits with status 3, the reason on the last stderr line;
- it exits when its stdin closes, so a parent that dies (even by SIGKILL) takes it along.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

READY_PREFIX = "COVEY-ENGINE-LISTENING "
EXIT_LOAD_FAILED = 3


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="covey-engine")
    p.add_argument("--model", required=True)
    p.add_argument("--alias", required=True)
    p.add_argument("--ctx", type=int, default=2048, help="context per slot, tokens")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gpu-layers", type=int, default=None)
    p.add_argument("--embeddings", action="store_true")
    p.add_argument("--mean-pooling", action="store_true",
                   help="pool embeddings by mean (for models that do not declare a pooling)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}  # a set in this binding; the id reported in responses
    params.port = 0  # llama.cpp picks a free port; we report the one it got
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx * args.parallel
    # Chat requests are formatted with the GGUF's own chat template (Jinja, as llama-server's
    # --jinja). This binding already defaults to it; set here so a change of default cannot
    # silently fall back to a built-in guess and make the model answer with template debris.
    params.use_jinja = True
    params.endpoint_metrics = True
    params.endpoint_slots = True
    if args.threads:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    if args.gpu_layers is not None:
        params.n_gpu_layers = args.gpu_layers
    if args.embeddings:
        params.embedding = True
    if args.mean_pooling:
        params.pooling_type = xllamacpp.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    # SIGTERM from the supervisor: leave at once; llama.cpp holds nothing worth flushing.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        server = xllamacpp.Server(params)
    # xllamacpp raises a plain RuntimeError/ValueError with llama.cpp's message on load failure.
    except Exception as exc:
        print(f"engine failed to load {args.model}: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    print(READY_PREFIX + server.listening_address, flush=True)
    # Block until the parent goes away (stdin EOF), then exit without running destructors:
    # tearing down llama.cpp's threads can take seconds and nothing needs saving.
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
