"""Command line: `python -m helpers --prompt TEXT` prints what the model says next (greedy)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .errors import LlamaError
from .model import forward
from .tiny import COURSE_PROMPT
from .tokenizer import load_tokenizer
from .weights import context_length, default_model_dir, load_model, model_name


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m helpers", description="Run Llama 3 built by hand on a prompt.")
    p.add_argument("--prompt", default=COURSE_PROMPT, help="text to continue (default: the course prompt)")
    p.add_argument("--model-dir", type=Path, help="Meta-format folder (default: $LLAMA3_DIR, the 8B, or the tiny model)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="stop after this many new tokens (default 32)")
    return p.parse_args(argv)


def run(args) -> None:
    if not args.prompt:
        raise LlamaError("The prompt is empty: give some text with --prompt.")
    if args.max_new_tokens < 1:
        raise LlamaError("--max-new-tokens must be at least 1.")
    model_dir = args.model_dir or default_model_dir(verbose=False)
    weights, params = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    print(f"[model: {model_name(model_dir)}]", file=sys.stderr)
    tokens = tokenizer.encode(args.prompt, bos=True, eos=False)
    limit = context_length(params)
    if len(tokens) + 1 > limit:
        raise LlamaError(f"The prompt is {len(tokens)} tokens but the model's context holds {limit}: shorten it.")
    new = []
    with torch.inference_mode():
        for _ in range(min(args.max_new_tokens, limit - len(tokens))):
            next_token = int(forward(weights, params, tokens + new)[-1].argmax())
            if next_token in tokenizer.stop_tokens:
                break
            new.append(next_token)
    print(tokenizer.decode(new))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except LlamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
