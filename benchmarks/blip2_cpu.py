"""BLIP-2's real architectures on this machine, with random weights: what they cost.

    python benchmarks/blip2_cpu.py retrieval   # ViT-g/14 + Q-Former: embedding (fp32, int8), ITM
    python benchmarks/blip2_cpu.py caption     # ViT-g/14 + Q-Former + OPT-2.7b: one caption
    python benchmarks/blip2_cpu.py all         # both, each in its own process (peak RSS apart)

The configurations are those of Salesforce/blip2-itm-vit-g and Salesforce/blip2-opt-2.7b
(EVA ViT-g/14 at 224 px: 39 layers, width 1408; a BERT-base Q-Former with 32 queries and
cross-attention every 2nd layer; OPT-2.7b: 32 layers, width 2560, vocabulary 50272),
built empty and filled with random numbers: speed and memory do not depend on the
values. The engine's own code runs them (Blip2RetrievalModel, Blip2Captioner). A random
language model rarely ends a caption early, so captions run to --max-length: the worst
case of the default decoding (3 beams, 5 to 20 tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["retrieval", "caption", "all"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--print-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
