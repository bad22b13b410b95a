"""BLIP-2's real architectures on this machine, with random weights: what they cost.

    python benchmarks/blip2_cpu.py retrieval   # ViT-g/14 + Q-Former: embedding (fp32, int8), ITM
    python benchmarks/blip2_cpu.py caption     # ViT-g/14 + Q-Former + OPT-2.7b: one caption
    python benchmarks/blip2_cpu.py all         # both, each in its own process (peak RSS apart)
    python benchmarks/blip2_cpu.py search --compare SRC   # a whole `search --no-rerank`, this code and SRC's

The configurations are those of Salesforce/blip2-itm-vit-g and Salesforce/blip2-opt-2.7b
(EVA ViT-g/14 at 224 px: 39 layers, width 1408; a BERT-base Q-Former with 32 queries and
cross-attention every 2nd layer; OPT-2.7b: 32 layers, width 2560, vocabulary 50272),
built empty and filled with random numbers: speed and memory do not depend on the
values. The engine's own code runs them (Blip2RetrievalModel, Blip2Captioner). A random
language model rarely ends a caption early, so captions run to --max-length: the worst
case of the default decoding (3 beams, 5 to 20 tokens).

``search`` saves such a retrieval checkpoint (random weights, the Q-Former's text path
widened so that texts get distinct vectors; 4.7 GB of safetensors, made once under
--workdir), checks the torch-free text path against the torch one on it, makes a
library of --images synthetic images (32 vectors each), and times whole
``blipsearch search TEXT --no-rerank`` processes (in-process, no server) with their peak
RSS, for this checkout and, with ``--compare SRC``, for the code in SRC
(``PYTHONPATH=SRC``; e.g. ``git archive REV | tar -x -C SRC``), the two alternating
run by run. Results in benchmarks/results/blip2_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save, synthetic_library

VISION = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16,
          "image_size": 224, "patch_size": 14, "layer_norm_eps": 1e-6, "qkv_bias": True}
QFORMER = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
           "encoder_hidden_size": 1408, "cross_attention_frequency": 2, "vocab_size": 30524}
OPT_2_7B = {"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
            "num_attention_heads": 32, "word_embed_proj_dim": 2560, "vocab_size": 50272,
            "max_position_embeddings": 2048, "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}


def _peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _random(model_class: Any, config: Any) -> torch.nn.Module:
    with torch.device("meta"):
        net = model_class(config)
    net = net.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.02, generator=gen)
        for name, buffer in net.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return net.eval()


def _checkpoint(kind: str, net: torch.nn.Module, tokenizer: Any) -> Any:
    from blipsearch.images.decode import ImageSpec
    from blipsearch.models.checkpoint import Checkpoint

    return Checkpoint(f"random-{kind}", Path("."), "random", net, tokenizer, ImageSpec(height=224, width=224),
                      torch.device("cpu"), torch.float32)


def _timed(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def retrieval(images: int) -> dict[str, Any]:
    from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval

    from blipsearch.models.blip2 import Blip2RetrievalModel
    from blipsearch.models.checkpoint import quantize_vision_int8

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)] + ["[DEC]", "[ENC]"]
    folder = Path("/tmp/blip2-bench-vocab")
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))
    config = Blip2Config(vision_config=VISION, qformer_config={**QFORMER, "use_qformer_text_input": True},
                         num_query_tokens=32, image_text_hidden_size=256)
    began = time.perf_counter()
    net = _random(Blip2ForImageTextRetrieval, config)
    build_s = time.perf_counter() - began
    params = sum(p.numel() for p in net.parameters())
    model = Blip2RetrievalModel(**vars(_checkpoint("retrieval", net, tokenizer)), itm_token="cls")
    pixels = np.random.default_rng(0).standard_normal((images, 3, 224, 224)).astype(np.float32)
    batch = model.batch_size
    out: dict[str, Any] = {"parameters": params, "build_s": round(build_s, 1), "batch_size": batch}

    def embed() -> None:
        for start in range(0, images, batch):
            model.embed_images(pixels[start : start + batch])

    out["embed_s_per_image_fp32"] = round(_timed(embed, 2) / images, 3)
    tokens = model.image_tokens(pixels[:1])
    texts = [f"w{i} w{i + 1} w{i + 2} w{i + 3} w{i + 4} w{i + 5} w{i + 6} w{i + 7}" for i in range(16)]
    out["itm_s_per_candidate_one_image"] = round(_timed(lambda: model.itm_logits(texts, tokens), 2) / 16, 4)
    own = model.image_tokens(pixels[: min(8, images)])
    out["itm_s_per_candidate_own_image"] = round(
        _timed(lambda: model.itm_logits(texts[: len(own)], own), 2) / len(own), 4)
    out["peak_rss_gb_fp32"] = _peak_gb()
    fp32 = model.embed_images(pixels[:4])
    quantize_vision_int8(net)
    out["embed_s_per_image_int8"] = round(_timed(embed, 2) / images, 3)
    int8 = model.embed_images(pixels[:4])
    out["int8_cosine_to_fp32_min"] = round(float((fp32 * int8).sum(-1).min()), 4)
    out["peak_rss_gb"] = _peak_gb()
    return out


def caption(max_length: int) -> dict[str, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    from blipsearch.describe.blip2 import Blip2Captioner
    from blipsearch.options import CaptionSettings

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(50261)]
                                            + ["<image>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="</s>", bos_token="</s>")
    config = Blip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=OPT_2_7B, num_query_tokens=32,
                         image_token_index=vocab["<image>"])
    began = time.perf_counter()
    net = _random(Blip2ForConditionalGeneration, config)
    build_s = time.perf_counter() - began
    params = sum(p.numel() for p in net.parameters())
    captioner = Blip2Captioner(_checkpoint("caption", net, tokenizer))
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    settings = CaptionSettings(prompt="", max_length=max_length)
    start = time.perf_counter()
    words = captioner.caption(pixels, settings)[0].split()
    seconds = time.perf_counter() - start
    greedy = CaptionSettings(prompt="", num_beams=1, max_length=max_length)
    start = time.perf_counter()
    captioner.caption(pixels, greedy)
    greedy_s = time.perf_counter() - start
    return {"parameters": params, "build_s": round(build_s, 1), "max_length": max_length,
            "caption_s_per_image_beams3": round(seconds, 1), "caption_tokens": len(words),
            "caption_s_per_image_greedy": round(greedy_s, 1), "peak_rss_gb": _peak_gb()}


def _widen_text(net: torch.nn.Module, seed: int = 1) -> None:
    """Content-dependent text vectors: the text path's matrices at std 1/sqrt(fan_in), its
    embeddings at std 1 and its LayerNorms near 1 (``_random`` leaves them all at std 0.02)."""
    gen = torch.Generator().manual_seed(seed)
    parts: Any = net
    with torch.no_grad():
        for part in (parts.embeddings, parts.qformer, parts.text_projection):
            for module in part.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) / module.weight.shape[1] ** 0.5)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
                elif isinstance(module, torch.nn.Embedding):
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
                elif isinstance(module, torch.nn.LayerNorm):
                    module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))


SEARCH_TEXTS = ["w17 w2045 w9 w300", "w5 w6 w7", "w30000 w1 w12 w12 w800 w4", "w77"]


def make_retrieval_checkpoint(folder: Path) -> dict[str, Any]:
    """Salesforce/blip2-itm-vit-g's architecture with random weights, saved in the hub layout (once);
    the max difference of the torch-free text vectors from the engine's torch ones on it."""
    from transformers import (
        AutoTokenizer,
        BertTokenizerFast,
        Blip2Config,
        Blip2ForImageTextRetrieval,
    )

    from blipsearch.models.blip2 import Blip2RetrievalModel
    from blipsearch.models.textquery import TextQueryEncoder

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from tiny_blip import write_image_processor

    config = Blip2Config(vision_config=VISION, qformer_config={**QFORMER, "use_qformer_text_input": True},
                         num_query_tokens=32, image_text_hidden_size=256)
    net = _random(Blip2ForImageTextRetrieval, config)
    _widen_text(net)
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30517)] + ["[DEC]", "[ENC]"]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
        net.save_pretrained(folder)
        write_image_processor(folder, 224)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = Blip2RetrievalModel(**{**vars(_checkpoint("retrieval", net, tokenizer)), "path": folder})
    began = time.perf_counter()
    encoder = TextQueryEncoder(folder)
    load_s = time.perf_counter() - began
    ours, theirs = encoder.embed_texts(SEARCH_TEXTS), model.embed_texts(SEARCH_TEXTS)
    cosines = theirs @ theirs.T
    from safetensors import safe_open

    sizes: dict[str, int] = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="numpy") as f:
            sizes.update({k: int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()})  # noqa: SIM118
    return {"parameters": sum(p.numel() for p in net.parameters()),
            "weights_gb": round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9, 2),
            "text_path_tensors": len(encoder.read), "text_path_gb": round(sum(sizes[k] for k in encoder.read) * 4 / 1e9, 2),
            "text_encoder_load_s": round(load_s, 2),
            "max_abs_diff_vs_torch": float(np.abs(ours - theirs).max()),
            "max_cosine_between_texts": round(float(cosines[~np.eye(len(SEARCH_TEXTS), dtype=bool)].max()), 3)}


# The peak RSS a child reports (wait4) starts at its parent's own peak when the parent forks it, and
# this process has held the model: a small fresh Python starts and times each command instead.
_LAUNCH = """
import json, os, subprocess, sys, tempfile, time
with tempfile.TemporaryFile() as errors:
    start = time.perf_counter()
    process = subprocess.Popen(json.loads(sys.argv[1]), stdout=subprocess.DEVNULL, stderr=errors)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    errors.seek(0)
    print(json.dumps({"s": seconds, "rss_gb": usage.ru_maxrss / 2**20, "rc": os.waitstatus_to_exitcode(status),
                      "stderr": errors.read().decode(errors="replace")[-4000:]}))
"""


def _process(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of one whole ``blipsearch`` process."""
    command = [str(Path(sys.executable).parent / "blipsearch"), *args]
    done = subprocess.run([sys.executable, "-c", _LAUNCH, json.dumps(command)], env=env, capture_output=True,
                          text=True, check=True)
    result = json.loads(done.stdout)
    if result["rc"]:
        raise RuntimeError(f"{args} failed: {result['stderr']}")
    return result["s"], result["rss_gb"]


def search(workdir: Path, images: int, runs: int, source: Path | None) -> dict[str, Any]:
    import statistics

    checkpoint = workdir / "blip2-itm-vit-g-random"
    out: dict[str, Any] = {"checkpoint": make_retrieval_checkpoint(checkpoint)}
    library = synthetic_library(workdir, images, checkpoint, "blip2-search-library")
    here = str(Path(__file__).resolve().parent.parent)
    sides = {"this": here, **({"other": str(source.resolve())} if source else {})}
    args = ["search", "w17 w2045 w9 w300", "--no-rerank", "--library", str(library)]
    found: dict[str, dict[str, list[float]]] = {side: {"s": [], "rss": []} for side in sides}
    load_before = os.getloadavg()[0]
    for side, code in sides.items():  # warm-up: page cache, the fingerprint cache
        _process(args, {**os.environ, "BLIPSEARCH_IN_PROCESS": "1", "PYTHONPATH": code})
    for _ in range(runs):
        for side, code in reversed(sides.items()):
            seconds, rss = _process(args, {**os.environ, "BLIPSEARCH_IN_PROCESS": "1", "PYTHONPATH": code})
            found[side]["s"].append(seconds)
            found[side]["rss"].append(rss)
    out.update(images=images, runs=runs, other=str(source) if source else None, command=" ".join(args[:3]),
               load_average_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)])  # other processes' too
    for side, values in found.items():
        out[side] = {"median_s": round(statistics.median(values["s"]), 2), "min_s": round(min(values["s"]), 2),
                     "peak_rss_gb": round(max(values["rss"]), 2)}
    shutil.rmtree(library, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["retrieval", "caption", "all", "search"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--print-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--library-images", type=int, default=1000)
    parser.add_argument("--compare", type=Path, default=None, metavar="SRC")
    args = parser.parse_args()
    if args.what == "search":
        found = search(args.workdir, args.library_images, args.runs, args.compare)
        print(json.dumps(found, indent=2))
        print(save("blip2_search", found))
        return
    if args.what == "all":
        results = {}
        for what in ("retrieval", "caption"):
            run = subprocess.run([sys.executable, __file__, what, "--images", str(args.images), "--max-length",
                                  str(args.max_length), "--print-only"], capture_output=True, text=True, check=True)
            results[what] = json.loads(run.stdout.strip().splitlines()[-1])
            print(what, results[what], flush=True)
        print(save("blip2_cpu", {"torch_threads": torch.get_num_threads(), **results}))
        return
    result = retrieval(args.images) if args.what == "retrieval" else caption(args.max_length)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
