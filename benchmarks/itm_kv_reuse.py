"""ITM for one image against many texts: three ways to run the cross-attention.

    python benchmarks/itm_kv_reuse.py [--texts 64] [--device cpu]

Base-size BLIP (random weights, real cost). The plain path is transformers'
own text encoder with every text given its own copy of the image tokens, so
each of the 12 cross-attention layers projects the 577 image tokens to keys
and values once per text. The per-pair path is ``itm_logits`` with one image
per text: queries carried through the key weights, no projection of the
image tokens (what reranking uses). The shared path passes the image once:
its keys and values are computed once per layer for all texts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import make_base_checkpoint, save, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=64, help="texts per batch (lookup and tag use 64)")
    parser.add_argument("--tokens", type=int, default=14, help="text length in tokens, [CLS] and [SEP] included")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from blipsearch.models.retrieval import load_retrieval_model

    device = torch.device(args.device)
    # Widened random weights: logits differ between texts, so the comparison can fail.
    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    model = load_retrieval_model(str(checkpoint), args.device)
    dtype = model.dtype
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, 30000, args.tokens - 2)) for _ in range(args.texts)]
    image = torch.randn(1, 577, 768, device=device, dtype=dtype)
    expanded = image.expand(args.texts, -1, -1).contiguous()

    @torch.inference_mode()
    def transformers_itm() -> np.ndarray:
        batch = model.tokenize(texts, for_itm=True)
        mask = torch.ones(expanded.shape[:-1], dtype=torch.long, device=device)
        hidden = model.net.text_encoder(**batch, encoder_hidden_states=expanded,
                                        encoder_attention_mask=mask).last_hidden_state
        return model.net.itm_head(hidden[:, 0]).float().cpu().numpy()

    plain = timed(transformers_itm, repeat=args.repeat)
    per_pair = timed(lambda: model.itm_logits(texts, expanded), repeat=args.repeat)
    shared = timed(lambda: model.itm_logits(texts, image), repeat=args.repeat)
    reference = transformers_itm()
    diff = max(float(np.abs(reference - model.itm_logits(texts, x)).max()) for x in (expanded, image))
    per_plain = plain["median_s"] / args.texts
    per_absorbed = per_pair["median_s"] / args.texts
    per_shared = shared["median_s"] / args.texts
    result = {
        "texts": args.texts,
        "text_tokens": args.tokens,
        "device": str(device),
        "dtype": str(dtype),
        "plain_s_per_candidate": per_plain,
        "per_pair_s_per_candidate": per_absorbed,
        "shared_s_per_candidate": per_shared,
        "speedup": per_plain / per_shared,
        "max_abs_logit_difference": diff,
        "logit_spread": float(np.ptp(reference[:, 1])),
    }
    path = save(f"itm_kv_reuse_{device.type}", result)
    print("| path | s per candidate |\n|---|---|")
    print(f"| plain (K/V per text) | {per_plain:.4f} |\n| per pair, no K/V projection | {per_absorbed:.4f} |\n"
          f"| shared image K/V | {per_shared:.4f} |")
    print(f"speed-up {result['speedup']:.2f}x, max logit difference {diff:.2e}; written to {path}")
    np.testing.assert_allclose(diff, 0, atol=1e-3 if dtype == torch.float16 else 1e-4)


if __name__ == "__main__":
    main()
