"""Does the Grad-CAM of a match point at the right object? Measured on the shapes world.

    python benchmarks/explain_shapes.py

Each scene holds two objects, one per half of the picture. For every scene whose
objects differ in both color and shape, each object is queried by itself
("a red circle") with the built-in retrieval model, and a scene counts as
found when more than half of the heat map's mass lies on that object's half.

Two disjoint sets of the shapes test split (seed 0): its first 276 scenes
choose the layer (validation), the other 276 measure it (held out;
tests/test_explain.py checks the first 150 of these). The test split walks
through every object pair once per 552 scenes, so the two sets share no pair
of objects either. For comparison, each
layer's attention alone (no gradient, same heads and words) is measured too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save  # noqa: E402

SEED = 0
VALIDATION = range(0, 276)
HELD_OUT = range(276, 552)
SIDES = ("left", "right")


def scenes(indices: range) -> list[Any]:
    """The scenes of ``indices`` whose two objects differ in color and in shape."""
    from blipsearch.shapes.world import generate

    found = generate("test", len(indices), SEED, start=indices.start)
    return [s for s in found if s.left[0] != s.right[0] and s.left[1] != s.right[1]]


def on_side(heat: np.ndarray, side: str) -> float:
    """The map's mass on the left or right half of the patch grid."""
    half = heat.shape[1] // 2
    return float(heat[:, :half].sum() if side == "left" else heat[:, half:].sum())


def attention_alone(model: Any, text: str, pixels: np.ndarray, layer: int) -> np.ndarray:
    """The same layer's cross-attention, averaged over heads and words, without gradients."""
    import torch

    batch = model.tokenize([text], for_itm=True)
    tokens = model.image_tokens(pixels[None])
    with torch.inference_mode():
        out = model.net.text_encoder(**batch, encoder_hidden_states=tokens,
                                     encoder_attention_mask=torch.ones(tokens.shape[:2], dtype=torch.long),
                                     output_attentions=True)
    probs = out.cross_attentions[layer][0, :, 1:-1, 1:].float().mean(dim=(0, 1))
    heat = probs.reshape(int(len(probs) ** 0.5), -1).numpy()
    return heat / heat.sum()


def measure(model: Any, chosen: list[tuple[Any, np.ndarray]], method: Any, layer: int) -> dict[str, Any]:
    from blipsearch.shapes.world import phrase

    rows: dict[str, Any] = {}
    left_half = {}
    for side in SIDES:
        maps = [method(model, phrase(getattr(scene, side)), pixels, layer) for scene, pixels in chosen]
        mass = np.array([on_side(heat, side) for heat in maps])
        left_half[side] = np.array([on_side(heat, "left") for heat in maps])
        rows[side] = {"found": float(np.mean(mass > 0.5)), "mean_mass": float(mass.mean())}
    rows["both"] = {k: float(np.mean([rows[s][k] for s in SIDES])) for k in ("found", "mean_mass")}
    # A map that ignored the text would be the same for both queries: this counts the
    # scenes where naming the left object puts more mass on the left than naming the right one.
    rows["moves_with_query"] = float(np.mean(left_half["left"] > left_half["right"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:shapes")
    args = parser.parse_args()

    from blipsearch.models.explain import default_layer, heat_map
    from blipsearch.models.retrieval import load_retrieval_model

    model = load_retrieval_model(args.model, "cpu")
    depth = len(model.net.text_encoder.encoder.layer)
    # PNG is lossless: a rendered scene's pixels are those load_pixels would read back from its file.
    sets = {name: [(scene, model.image_spec.to_pixels(scene.image)) for scene in scenes(indices)]
            for name, indices in (("validation", VALIDATION), ("held_out", HELD_OUT))}

    seconds, maps = 0.0, 0
    gradcam: dict[str, dict[int, Any]] = {name: {} for name in sets}
    attention: dict[str, dict[int, Any]] = {name: {} for name in sets}
    for name, chosen in sets.items():
        for layer in range(depth):
            start = time.perf_counter()
            gradcam[name][layer] = measure(model, chosen, heat_map, layer)
            seconds += time.perf_counter() - start
            maps += len(SIDES) * len(chosen)
            attention[name][layer] = measure(model, chosen, attention_alone, layer)
    per_map = seconds / maps

    best = max(range(depth), key=lambda i: (gradcam["validation"][i]["both"]["found"],
                                            gradcam["validation"][i]["both"]["mean_mass"]))
    result = {
        "model": args.model,
        "text_layers": depth,
        "scenes": {name: len(chosen) for name, chosen in sets.items()},
        "split": {"split": "test", "seed": SEED, "validation": [VALIDATION.start, VALIDATION.stop],
                  "held_out": [HELD_OUT.start, HELD_OUT.stop]},
        "criterion": "found: more than half of the map's mass on the queried object's half of the picture; "
                 "moves_with_query: more mass on the left half when the left object is named than when "
                 "the right one is",
        "best_layer_on_validation": best,
        "default_layer": default_layer(depth),
        "gradcam": gradcam,
        "attention_alone": attention,
        "seconds_per_map": round(per_map, 4),
    }
    path = save("explain_shapes", result)

    print(f"{args.model}: {depth} text layers; scenes with two different objects: "
          f"{len(sets['validation'])} validation, {len(sets['held_out'])} held out. "
          "Found: more than half the map's mass on the queried object's half.")
    print("\n| layer | map | validation left | validation right | held-out left | held-out right "
          "| held-out mean mass | held-out moves with query |")
    print("|---|---|---|---|---|---|---|---|")
    for layer in range(depth):
        for label, table in (("Grad-CAM", gradcam), ("attention alone", attention)):
            v, h = table["validation"][layer], table["held_out"][layer]
            print(f"| {layer} | {label} | {100 * v['left']['found']:.1f} | {100 * v['right']['found']:.1f} | "
                  f"{100 * h['left']['found']:.1f} | {100 * h['right']['found']:.1f} | {h['both']['mean_mass']:.3f} | "
                  f"{100 * h['moves_with_query']:.1f} |")
    print(f"\nbest layer on validation: {best}; default_layer({depth}) = {default_layer(depth)}; "
          f"{1000 * per_map:.1f} ms per map")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
