#!/usr/bin/env python
"""Download Meta's original Llama 3 files from the Hugging Face Hub.

    python download_weights.py [MODEL] [--dir DIR] [--list]

MODEL is a short name from --list (default: 8b, meta-llama/Meta-Llama-3-8B) or a full repo id.
Only the repo's original/ folder is fetched (params.json, tokenizer.model, consolidated.*.pth), the
format the notebooks read, never the Hugging Face-format safetensors beside it. The files land in
DIR/original/ (DIR defaults to weights/<repo name>/), the folder LLAMA3_DIR names.

The 70B and 405B come in several shards (consolidated.00.pth ... , one per GPU of Meta's tensor
parallelism, notebook 14); the 405B's repos keep two cuts, original/mp16/ (16 shards) and original/mp8/
(8 shards): `3.1-405b` fetches the first, `3.1-405b-mp8` the second. Free disk space is checked first.

The token comes from HF_TOKEN or `hf auth login`, as for any huggingface_hub program (HF_ENDPOINT,
HF_HOME, HF_HUB_OFFLINE, proxies ... work too). We hand it to huggingface_hub and never look at it.

Why not plain hf_hub_download: it deletes a half-downloaded file when the transfer fails, so a cut
connection would restart a 16 GB checkpoint from zero. Here each file grows in DIR/.cache/download_weights/
and a re-run continues it with an HTTP Range request. It moves into original/ only once its size and
checksum match the Hub's, so original/ never holds a partial file.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # = helpers.weights.WEIGHTS_DIR (a test checks)



@dataclass(frozen=True)
class Model:
    repo_id: str
    size_gb: float  # approximate size of Meta's files (bf16 weights: 2 bytes per parameter)
    shards: int = 1  # consolidated.00.pth ... : one per GPU of Meta's tensor parallelism
    folder: str = "original"  # where the repo keeps Meta's files
    suffix: str = ""  # appended to the default folder name, for a second cut of the same repo


# Sizes: the 8B's and 3.2's files as the Hub lists them; the big ones from their parameter counts (params.json in
# llama_models/sku_list.py): 70B 70.55e9 parameters -> 141.1 GB, 8 files of 17.6 GB (as the Hub lists them);
# 405B 405.85e9 -> 811.7 GB in 8 files; its 16-shard cut repeats each KV head twice (n_kv_heads 16): 820.2 GB.
MODELS = {
    "8b": Model("meta-llama/Meta-Llama-3-8B", 16.1),
    "8b-instruct": Model("meta-llama/Meta-Llama-3-8B-Instruct", 16.1),
    "3.1-8b": Model("meta-llama/Llama-3.1-8B", 16.1),
    "3.1-8b-instruct": Model("meta-llama/Llama-3.1-8B-Instruct", 16.1),
    "3.2-1b": Model("meta-llama/Llama-3.2-1B", 2.5),
    "3.2-1b-instruct": Model("meta-llama/Llama-3.2-1B-Instruct", 2.5),
    "3.2-3b": Model("meta-llama/Llama-3.2-3B", 6.4),
    "3.2-3b-instruct": Model("meta-llama/Llama-3.2-3B-Instruct", 6.4),
    "70b": Model("meta-llama/Meta-Llama-3-70B", 141.1, 8),
    "70b-instruct": Model("meta-llama/Meta-Llama-3-70B-Instruct", 141.1, 8),
    "3.1-70b": Model("meta-llama/Llama-3.1-70B", 141.1, 8),
    "3.1-70b-instruct": Model("meta-llama/Llama-3.1-70B-Instruct", 141.1, 8),
    "3.3-70b-instruct": Model("meta-llama/Llama-3.3-70B-Instruct", 141.1, 8),
    "3.1-405b": Model("meta-llama/Llama-3.1-405B", 820.2, 16, "original/mp16"),
    "3.1-405b-instruct": Model("meta-llama/Llama-3.1-405B-Instruct", 820.2, 16, "original/mp16"),
    "3.1-405b-mp8": Model("meta-llama/Llama-3.1-405B", 811.7, 8, "original/mp8", "-mp8"),
    "3.1-405b-instruct-mp8": Model("meta-llama/Llama-3.1-405B-Instruct", 811.7, 8, "original/mp8", "-mp8"),
}
DEFAULT_MODEL = "8b"
SHARD = re.compile(r"consolidated\.\d+\.pth")
STATE = "state.json"  # in DIR/.cache/download_weights/: what is known to be complete (no token, ever)


class Abort(Exception):
    """A problem the user can fix: main() prints the message alone (no traceback) and exits with 1."""


@dataclass
class RemoteFile:
    name: str  # "params.json", "tokenizer.model", "consolidated.00.pth" (in the repo: <folder>/<name>)
    size: int
    checksum: str | None  # "sha256:<hex>" for LFS files, "git-sha1:<hex>" for small ones
    folder: str = "original"

    @property
    def repo_path(self) -> str:
        return f"{self.folder}/{self.name}"


def gb(n: int | float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{int(n)} bytes"


def print_models() -> None:
    print("Llama 3 models (python download_weights.py NAME):\n")
    for short, m in MODELS.items():
        name = short + " (default)" * (short == DEFAULT_MODEL)
        files = "1 file" if m.shards == 1 else f"{m.shards} shards of ~{m.size_gb / m.shards:.1f} GB in {m.folder}/"
        print(f"  {name:<23} {m.repo_id:<37} ~{m.size_gb:5.1f} GB  {files}")
    print("\nSizes are approximate (Meta's original/ files only); the exact sizes are asked from the Hub before "
          "downloading.\nA model in shards runs merged in one process (it needs that much memory) or across "
          "processes with torchrun (notebook 14).\nAll are gated: accept Meta's license on the model page first "
          "(README: Getting the real weights).")


def resolve(model: str) -> Model:
    """A short name, a repo name or a full repo id -> the Model (a repo we do not list: its original/ folder)."""
    key = model.lower()
    if key in MODELS:
        return MODELS[key]
    for m in MODELS.values():
        if key in (m.repo_id.lower(), m.repo_id.split("/")[1].lower()):
            return m
    if "/" in model:
        return Model(model, 0.0)
    raise Abort(f"Unknown model {model!r}: give a short name from --list ({', '.join(MODELS)}) "
                "or a full repo id such as meta-llama/Llama-3.2-1B.")


def resolve_model(model: str) -> str:
    """A short name, a repo name or a full repo id -> repo id."""
    return resolve(model).repo_id


def default_dir(repo_id: str, suffix: str = "") -> Path:
    return WEIGHTS_DIR / (repo_id.split("/")[-1] + suffix)


# --- talking to the Hub ---------------------------------------------------------------------------

def list_original(repo_id: str, where: str = "original") -> tuple[str, bool, list[RemoteFile]]:
    """(commit, gated, Meta's files in the folder `where` with sizes and checksums), from one model_info call."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True)
    files = []
    for s in info.siblings or []:
        folder, _, name = s.rfilename.rpartition("/")
        if folder == where and (name in ("params.json", "tokenizer.model") or SHARD.fullmatch(name)):
            checksum = f"sha256:{s.lfs.sha256}" if s.lfs else f"git-sha1:{s.blob_id}" if s.blob_id else None
            size = s.size if s.size is not None else (s.lfs.size if s.lfs else 0)
            files.append(RemoteFile(name, size, checksum, where))
    return info.sha, bool(info.gated), sorted(files, key=lambda f: (f.size, f.name))


def check_listing(repo_id: str, files: list[RemoteFile], where: str = "original") -> None:
    """Stop before downloading anything the notebooks could not use: Meta's three kinds of file, every shard."""
    names = {f.name for f in files}
    shards = sorted(n for n in names if SHARD.fullmatch(n))
    if not shards or not {"params.json", "tokenizer.model"} <= names:
        raise Abort(f"{repo_id} has no {where}/ folder with Meta's files (params.json, tokenizer.model, "
                    "consolidated.00.pth): the course reads Meta's format only. "
                    "`--list` shows the Llama 3 repos that have it.")
    expected = [f"consolidated.{i:02d}.pth" for i in range(len(shards))]
    if shards != expected:
        raise Abort(f"{repo_id}'s {where}/ folder numbers its shards {shards[0]} ... {shards[-1]} with gaps "
                    f"({len(shards)} files): it is incomplete on the Hub; nothing was downloaded.")


def login_message(repo_id: str, endpoint: str) -> str:
    return (f"{repo_id} is a gated model and no Hugging Face token was found. To get it:\n"
            f"  1. log in on {endpoint} and accept Meta's license on {endpoint}/{repo_id}\n"
            "     (approval can take a while);\n"
            f"  2. create a token with read access on {endpoint}/settings/tokens;\n"
            "  3. run `hf auth login` and paste it (or set HF_TOKEN=<token> in your environment);\n"
            "then run this command again.")


@contextlib.contextmanager
def explained(repo_id: str, have_token: bool):
    """Turn huggingface_hub's and the network's exceptions into one clear sentence (an Abort)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError)

    try:
        import httpx2 as httpx  # huggingface_hub >= 2
    except ImportError:  # pragma: no cover - huggingface_hub 1.x
        import httpx

    endpoint, page = constants.ENDPOINT, f"{constants.ENDPOINT}/{repo_id}"
    resumes = "run the same command again: the download resumes where it stopped."
    try:
        yield
    except Abort:
        raise
    except GatedRepoError:  # before RepositoryNotFoundError, its parent class
        if not have_token:
            raise Abort(login_message(repo_id, endpoint)) from None
        raise Abort(f"Your Hugging Face account has not been granted access to {repo_id} yet: request it on {page} "
                    "(logged in) and run this again once the page says access is granted. If it already says so, "
                    "your token may not read gated repos: a fine-grained token needs 'Read access to contents of "
                    "all public gated repos you can access'.") from None
    except RepositoryNotFoundError:
        if not have_token and repo_id in (m.repo_id for m in MODELS.values()):  # gated models we know exist
            raise Abort(login_message(repo_id, endpoint)) from None
        raise Abort(f"There is no model {repo_id} on {endpoint} (or it is private and "
                    f"{'your token cannot see it' if have_token else 'you are not logged in'}): check the name; "
                    "`python download_weights.py --list` shows the Llama 3 models.") from None
    except RemoteEntryNotFoundError as e:
        raise Abort(f"{repo_id} changed while downloading ({e.response.url.path} is gone): {resumes}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code
        if status == 401 and have_token:
            raise Abort(f"The Hub rejected your Hugging Face token (401: invalid or revoked): create a new one on "
                        f"{endpoint}/settings/tokens and run `hf auth login` again (or fix HF_TOKEN).") from None
        raise Abort(f"{e.response.url.host} answered {status} {e.response.reason_phrase}: wait a little, then "
                    f"{resumes}") from None
    except OfflineModeIsEnabled:
        raise Abort("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it and run again.") from None
    except HFValidationError:
        raise Abort(f"{repo_id!r} is not a valid repo id (owner/name): `--list` shows the Llama 3 models.") from None
    except httpx.TransportError as e:
        raise Abort(f"The connection to the Hub failed ({type(e).__name__}: {str(e)[:120] or 'no details'}): "
                    f"check your network (and HF_ENDPOINT or proxy settings), then {resumes}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise Abort(f"The disk filled up while writing {e.filename or 'the download'}: free some space, then "
                        f"{resumes}") from None
        if e.errno is None:  # huggingface_hub's "Consistency check failed": the transfer ended early
            raise Abort(f"The transfer ended early ({str(e).splitlines()[0][:120]}): {resumes}") from None
        raise Abort(f"Cannot write {e.filename}: {e.strerror}. Choose another folder with --dir.") from None


def fetch(repo_id: str, commit: str, f: RemoteFile, cache: Path, orig_dir: Path) -> None:
    """Download (or continue) one file into the cache, check it, then move it into original/."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo_id, f.repo_path, revision=commit)
    meta = get_hf_file_metadata(url, retry_on_errors=True)  # raises GatedRepoError (401/403) etc.
    size = meta.size if meta.size is not None else f.size
    part = partial_path(cache, f)
    for stale in cache.glob(f"{f.name}.*.part"):  # left by an older version of the file
        if stale != part:
            stale.unlink()
    resume = part.stat().st_size if part.exists() else 0
    if resume > size:
        part.unlink()
        resume = 0
    headers = build_hf_headers()  # huggingface_hub adds the token itself
    if not same_origin(meta.location, constants.ENDPOINT):
        headers.pop("authorization", None)  # a signed CDN link: the token must not leave the Hub
    with open(part, "ab") as out:
        out.seek(0, os.SEEK_END)
        http_get(meta.location, out, resume_size=resume, headers=headers, expected_size=size,
                 displayed_filename=f.repo_path)
    if f.checksum and file_checksum(part, f.checksum) != f.checksum:
        part.unlink()
        raise Abort(f"{f.repo_path} arrived corrupted (its checksum differs from the Hub's) and was deleted: "
                    "run the same command again to download it afresh.")
    orig_dir.mkdir(parents=True, exist_ok=True)
    os.replace(part, orig_dir / f.name)  # atomic: original/ sees the whole file or nothing


def same_origin(a: str, b: str) -> bool:
    from urllib.parse import urlsplit

    a, b = urlsplit(a), urlsplit(b)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


# --- local state ----------------------------------------------------------------------------------

def partial_path(cache: Path, f: RemoteFile) -> Path:
    tag = (f.checksum or "unknown").split(":")[-1][:16]
    return cache / f"{f.name}.{tag}.part"


def file_checksum(path: Path, like: str) -> str:
    """'sha256:<hex>' or 'git-sha1:<hex>' (Git's blob hash) of a file, whichever kind `like` is."""
    from huggingface_hub.utils import tqdm

    kind, size = like.split(":")[0], path.stat().st_size
    h = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"checking {path.name}",
                                     disable=True if size < 2**28 else None) as bar:  # None: bar on a terminal
        for chunk in iter(lambda: f.read(2**24), b""):
            h.update(chunk)
            bar.update(len(chunk))
    return f"{kind}:{h.hexdigest()}"


def load_state(cache: Path) -> dict:
    try:
        return json.loads((cache / STATE).read_text())
    except (OSError, ValueError):
        return {}


def save_state(cache: Path, state: dict) -> None:
    tmp = cache / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, cache / STATE)


def already_here(f: RemoteFile, orig_dir: Path, state: dict) -> bool:
    """True if original/<name> is the Hub's file: recorded by an earlier run, or (once) by its checksum."""
    path, record = orig_dir / f.name, {"size": f.size, "checksum": f.checksum}
    if not path.is_file() or path.stat().st_size != f.size or f.checksum is None:
        return False
    if state["files"].get(f.name) == record:
        return True
    if file_checksum(path, f.checksum) == f.checksum:  # e.g. fetched by `hf download`
        state["files"][f.name] = record
        return True
    return False


def free_space(folder: Path) -> int:
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


# --- after the download ---------------------------------------------------------------------------

def verify(orig_dir: Path) -> str:
    """Load the files as the notebooks will (every shard's tensor shapes and norms, without reading the weights
    themselves); return a one-line summary or raise Abort."""
    import math

    import torch

    from helpers import LlamaError, check_weights, load_params, load_tokenizer, load_weights
    from helpers.shards import check_shard, full_shapes, load_shard, replicated_digest, shard_paths

    try:
        params = load_params(orig_dir)
        paths = shard_paths(orig_dir)
        if len(paths) == 1:
            weights = load_weights(orig_dir)  # mmap=True, weights_only=True
            check_weights(weights, params)
            shapes = {k: tuple(t.shape) for k, t in weights.items() if isinstance(t, torch.Tensor)}
            dtypes = {str(t.dtype) for t in weights.values() if isinstance(t, torch.Tensor)}
        else:
            digests, dtypes = set(), set()
            for path in paths:  # memory-mapped: only the headers and the norms are read
                shard = load_shard(path)
                check_shard(shard, params, len(paths), path)
                digests.add(replicated_digest(shard))
                dtypes |= {str(t.dtype) for t in shard.values()}
            if len(digests) > 1:
                raise LlamaError("the shards hold different norm weights: they come from different models.")
            shapes = full_shapes(shard, len(paths))
        tokenizer = load_tokenizer(orig_dir)
    except LlamaError as e:
        raise Abort(f"The downloaded files do not check out: {e}") from None
    vocab = shapes["tok_embeddings.weight"][0]
    if tokenizer.n_words > vocab:
        raise Abort(f"tokenizer.model has {tokenizer.n_words} tokens but the embedding only {vocab} rows: "
                    "the files come from different models.")
    n = sum(math.prod(s) for s in shapes.values())
    dtypes = sorted(d.removeprefix("torch.") for d in dtypes)
    kv = params["n_kv_heads"] or params["n_heads"]
    files = "" if len(paths) == 1 else f" in {len(paths)} shards"
    return (f"{params['n_layers']} layers, dim {params['dim']}, {params['n_heads']} heads / {kv} KV heads, "
            f"vocab {vocab}, {n / 1e9:.2f}B parameters in {'/'.join(dtypes)}{files}; "
            f"tokenizer: {tokenizer.n_words} tokens")


# --- the command ----------------------------------------------------------------------------------

def download(model: str, folder: str | None) -> Path:
    """Fetch Meta's original/ files of `model` into folder/original/, verify them; return that folder."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    spec = resolve(model)
    repo_id = spec.repo_id
    model_dir = Path(folder).expanduser().resolve() if folder else default_dir(repo_id, spec.suffix)
    orig_dir, cache = model_dir / "original", model_dir / ".cache" / "download_weights"
    have_token = "authorization" in build_hf_headers()  # HF_TOKEN or the stored login, as huggingface_hub sees it
    with explained(repo_id, have_token):
        commit, gated, files = list_original(repo_id, spec.folder)
        if gated and not have_token:
            raise Abort(login_message(repo_id, constants.ENDPOINT))
        check_listing(repo_id, files, spec.folder)

        state = load_state(cache)
        if state.get("repo_id", repo_id) != repo_id:
            raise Abort(f"{model_dir} already holds {state['repo_id']}: choose another folder with --dir.")
        state.update(repo_id=repo_id, commit=commit, files=state.get("files", {}))
        todo = [f for f in files if not already_here(f, orig_dir, state)]
        partial = {f.name: partial_path(cache, f).stat().st_size if partial_path(cache, f).exists() else 0
                   for f in todo}
        n_shards = sum(bool(SHARD.fullmatch(f.name)) for f in files)
        print(f"{repo_id} (commit {commit[:10]}): Meta's {spec.folder}/ files -> {orig_dir}"
              + (f" ({n_shards} shards, {gb(sum(f.size for f in files))})" if n_shards > 1 else ""))
        for f in sorted(files, key=lambda f: f.name):
            status = ("already here" if f not in todo else
                      f"to download, resuming at {gb(partial[f.name])}" if partial[f.name] else "to download")
            print(f"  {f.repo_path:<30} {gb(f.size):>10}  {status}")

        need, free = sum(f.size - partial[f.name] for f in todo), free_space(model_dir)
        if need > free:
            raise Abort(f"Not enough disk space: the download needs {gb(need)} more in {model_dir} but only {gb(free)} "
                        "is free there. Free some space, or choose a bigger disk with --dir.")
        if todo:
            from filelock import FileLock, Timeout

            cache.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(cache / "lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise Abort(f"Another download_weights.py is already writing to {model_dir}: let it finish.") from None
            try:
                save_state(cache, state)
                for f in todo:
                    fetch(repo_id, commit, f, cache, orig_dir)
                    state["files"][f.name] = {"size": f.size, "checksum": f.checksum}
                    save_state(cache, state)
            finally:
                lock.release()
        else:
            print("Nothing to download: every file is here and matches the Hub.")
            cache.mkdir(parents=True, exist_ok=True)
            save_state(cache, state)

        print(f"Verifying {orig_dir} ...")
        print("OK: " + verify(orig_dir))
    return orig_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download Meta's original Llama 3 files (original/ folder of a "
                                     "Hugging Face repo) and check that the notebooks can load them.")
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                        help=f"short name from --list or a repo id (default: {DEFAULT_MODEL})")
    parser.add_argument("--dir", help="the model folder; files land in DIR/original/ (default: weights/<repo name>/)")
    parser.add_argument("--list", action="store_true", help="list the Llama 3 models with their repo ids and sizes")
    args = parser.parse_args(argv)
    if args.list:
        print_models()
        return 0
    try:
        orig_dir = download(args.model, args.dir)
    except Abort as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nInterrupted: run the same command again and the download resumes where it stopped.", file=sys.stderr)
        return 130
    from helpers.weights import REAL_8B_DIR

    print("\nTo run the notebooks on this model, set LLAMA3_DIR before starting JupyterLab (e.g. `export` this line):")
    print(f"LLAMA3_DIR={shlex.quote(str(orig_dir))}")
    n_shards = len(list(orig_dir.glob("consolidated.*.pth")))
    if n_shards > 1:
        print(f"It is cut into {n_shards} shards: run it on {n_shards} processes (or a divisor or multiple of {n_shards}) "
              f"with\ntorchrun --nproc-per-node {n_shards} -m helpers --model-dir {shlex.quote(str(orig_dir))} "
              "--prompt \"...\"")
    if orig_dir == REAL_8B_DIR:
        print("(This is the default 8B location: the notebooks also find it without LLAMA3_DIR.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
