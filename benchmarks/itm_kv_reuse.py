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
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=14, help="text length in tokens")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "blipsearch-bench")
    args = parser.parse_args()

    from transformers import BlipForImageTextRetrieval

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    # Widened random weights: logits differ between texts, so the comparison can fail.
    checkpoint = make_base_checkpoint(args.workdir / "blip-base-random")
    net = BlipForImageTextRetrieval.from_pretrained(checkpoint).eval().to(device, dtype)
    image = torch.randn(1, 577, 768, device=device, dtype=dtype)
    ids = torch.randint(1000, 30000, (args.texts, args.tokens), device=device)
    ids[:, 0] = 30523
    mask = torch.ones_like(ids)

    def itm(tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            enc_mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=device)
            out = net.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=tokens,
                                   encoder_attention_mask=enc_mask)
            return net.itm_head(out.last_hidden_state[:, 0]).float()

    expanded = image.expand(args.texts, -1, -1).contiguous()
    plain = timed(lambda: itm(expanded), repeat=args.repeat)
    shared = timed(lambda: itm(image), repeat=args.repeat)
    reference = itm(expanded)
    diff = float((reference - itm(image)).abs().max())
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
        "logit_spread": float(reference[:, 1].max() - reference[:, 1].min()),
    }
    path = save(f"itm_kv_reuse_{device.type}", result)
    print("| path | s per candidate |\n|---|---|")
    print(f"| plain (K/V per text) | {per_plain:.4f} |\n| shared image K/V | {per_shared:.4f} |")
    print(f"speed-up {result['speedup']:.2f}x, max logit difference {diff:.2e}; written to {path}")
    np.testing.assert_allclose(diff, 0, atol=1e-3 if dtype == torch.float16 else 1e-4)


if __name__ == "__main__":
    main()
