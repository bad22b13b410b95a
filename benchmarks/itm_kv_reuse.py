"""ITM for one image against many texts: image keys/values computed once vs per text.

    python benchmarks/itm_kv_reuse.py [--texts 32] [--device cpu]

Base-size BLIP (random weights, real cost). The plain path gives every text
its own copy of the image tokens, so each of the 12 cross-attention layers
projects the 577 image tokens to keys and values once per text; the shared
path passes the image once and attention broadcasts it over the texts.
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

    from blipsearch.model import load_retrieval_model

    device = torch.device(args.device)
    # Widened random weights: logits differ between texts, so the comparison can fail.
    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    model = load_retrieval_model(str(checkpoint), args.device)
    dtype = model.dtype
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{i}" for i in rng.integers(0, 30000, args.tokens - 2)) for _ in range(args.texts)]
    image = torch.randn(1, 577, 768, device=device, dtype=dtype)
    expanded = image.expand(args.texts, -1, -1).contiguous()

    plain = timed(lambda: model.itm_logits(texts, expanded), repeat=args.repeat)
    shared = timed(lambda: model.itm_logits(texts, image), repeat=args.repeat)
    reference = model.itm_logits(texts, expanded)
    diff = float(np.abs(reference - model.itm_logits(texts, image)).max())
    per_plain = plain["median_s"] / args.texts
    per_shared = shared["median_s"] / args.texts
    result = {
        "texts": args.texts,
        "text_tokens": args.tokens,
        "device": str(device),
        "dtype": str(dtype),
        "plain_s_per_candidate": per_plain,
        "shared_s_per_candidate": per_shared,
        "speedup": per_plain / per_shared,
        "max_abs_logit_difference": diff,
        "logit_spread": float(np.ptp(reference[:, 1])),
    }
    path = save(f"itm_kv_reuse_{device.type}", result)
    print("| path | s per candidate |\n|---|---|")
    print(f"| plain (K/V per text) | {per_plain:.4f} |\n| shared image K/V | {per_shared:.4f} |")
    print(f"speed-up {result['speedup']:.2f}x, max logit difference {diff:.2e}; written to {path}")
    np.testing.assert_allclose(diff, 0, atol=1e-3 if dtype == torch.float16 else 1e-4)


if __name__ == "__main__":
    main()
