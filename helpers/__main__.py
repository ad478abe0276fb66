"""Command line: `python -m helpers --prompt TEXT` streams what the model says next (greedy by default).

Under torchrun (`torchrun --nproc-per-node N -m helpers ...`) the N processes run the model tensor-parallel,
each on its own piece of the checkpoint (helpers.launch); a folder of several shards run without torchrun is
merged into one process (helpers.shards)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .devices import describe, pick_device
from .errors import LlamaError
from .fast import choose_mode, describe_mode
from .generate import encode_dialog, generate_stream, stream_text
from .tiny import COURSE_PROMPT
from .tokenizer import load_tokenizer
from .weights import default_model_dir, load_model, model_name


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m helpers", description="Run Llama 3 built by hand on a prompt.")
    p.add_argument("--prompt", default=COURSE_PROMPT, help="text to continue (default: the course prompt)")
    p.add_argument("--model-dir", type=Path, help="Meta-format folder (default: $LLAMA3_DIR, the 8B, or the tiny model)")
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="stop after this many new tokens (default 32; fewer if the context is full)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more random")
    p.add_argument("--top-p", type=float, default=1.0, help="sample only from the nucleus of this mass (default 1)")
    p.add_argument("--seed", type=int, help="seed for sampling: the same seed prints the same text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in Llama 3's chat template")
    p.add_argument("--dtype", default="auto", help="compute dtype: auto (default: float32 for small models, "
                   "else bf16/float16 on a GPU, whichever this CPU runs faster on a CPU), bfloat16, float16 or "
                   "float32; or set LLAMA3_DTYPE")
    p.add_argument("--device", help="where to compute: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps "
                   "(default: $LLAMA3_DEVICE, else auto)")
    return p.parse_args(argv)


def run(args) -> None:
    if not args.prompt:
        raise LlamaError("The prompt is empty: give some text with --prompt.")
    if args.max_new_tokens < 1:
        raise LlamaError("--max-new-tokens must be at least 1.")
    device = pick_device(args.device, "--device")  # an absent device is said before anything loads
    model_dir = args.model_dir or default_model_dir(verbose=False)
    weights, params = load_model(model_dir)  # memory-mapped; a 70B-class folder of several shards is merged
    weights, dtype, fused = choose_mode(weights, args.dtype, device=device)  # moved and converted tensor by tensor
    tokenizer = load_tokenizer(model_dir)
    if args.chat:
        tokens = encode_dialog(tokenizer, [{"role": "user", "content": args.prompt}])
    else:
        tokens = tokenizer.encode(args.prompt, bos=True, eos=False)
    new_tokens = generate_stream(  # checks the arguments (context, temperature, top-p) before any output
        weights, params, tokens, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        stop_tokens=tokenizer.stop_tokens, seed=args.seed, dtype=dtype, fused=fused,
    )
    print(f"[model: {model_name(model_dir)}, computing in {describe_mode(weights, dtype, fused)} on {describe(device)}]",
          file=sys.stderr)
    for text in stream_text(tokenizer, new_tokens):
        print(text, end="", flush=True)
    print()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if "WORLD_SIZE" in os.environ:  # started by torchrun: one of several processes
            from .launch import run_parallel

            return run_parallel(args)
        run(args)
    except LlamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
