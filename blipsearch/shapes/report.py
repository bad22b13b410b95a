"""The training report: the README written beside the shipped checkpoints from a run's figures."""


from __future__ import annotations

from pathlib import Path
from typing import Any

from blipsearch.shapes import world


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _target_note(ret: dict[str, Any]) -> str:
    """States plainly which of the project's retrieval targets a run misses."""
    itc, itm = ret["t2i"]["itc"]["r1"], ret["t2i"]["itm"]["r1"]
    missed = []
    if itc < 0.6:
        missed.append(f"text -> image ITC R@1 is {_pct(itc)} % (target >= 60 %)")
    if itm < itc + 0.10:
        missed.append(f"ITM reranking moves R@1 by {100 * (itm - itc):+.1f} points (target >= +10)")
    if not missed:
        return ""
    return "**Below target:** " + "; ".join(missed) + ".\n\n"


def _errors_note(ret: dict[str, Any]) -> str:
    """What the wrong text -> image top hits get wrong, ITC and reranked."""
    errors = ret.get("top1_errors", {}).get("t2i")
    if not errors:
        return ""

    def part(kinds: dict[str, int]) -> str:
        return f"{sum(kinds.values())} (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")"

    return (f"Wrong text -> image top hits, by what they get wrong: ITC {part(errors['itc'])}; "
            f"reranked {part(errors['itm'])}. *binding* is a picture with the query's colors and shapes "
            "arranged differently (sides or attributes swapped), the errors a cross-attention matcher "
            "is there to fix; *color* and *shape* are pictures that show another color or shape.\n\n")


def _refinement_note(report: dict[str, Any]) -> str:
    ref = report.get("itm_refinement")
    if not ref:
        return ""
    first = "The run above did not include this stage (it predates it). " if "itm_refine_steps" not in report["hyperparameters"] else ""
    runs = [*report.get("earlier_itm_refinements", []), ref]
    text = f"""
{first}The ITM refinement (the last stage) was run by itself on the saved
retrieval checkpoint{f", {len(runs)} times, each on the result of the one before" if len(runs) > 1 else ""}:
"""
    for run in runs:
        before = run["retrieval_before"]["t2i"]
        partial = run.get("partial_before")
        partial_note = f"; partial descriptions' F1 {partial['f1']:.3f}" if partial else ""
        settings = ", ".join(f"{k} {v}" for k, v in run["settings"].items())
        text += f"""
    {run['command']}

{run['device']}, {run['wall_time_s']['itm_refine'] / 60:.1f} minutes ({settings}). Before it, text -> image R@1 was
{_pct(before['itc']['r1'])} % (ITC) and {_pct(before['itm']['r1'])} % (reranked){partial_note}.
"""
    return text


def _partial_note(report: dict[str, Any]) -> str:
    p = report["metrics"].get("partial")
    if not p:
        return ""
    return (f"Partial descriptions (the {p['texts']} one-object texts such as \"a red circle\", each "
            f"satisfied by every scene showing that object on either side), ITM over all {p['scenes']} test "
            f"scenes at match probability >= {p['min_match']}: precision {_pct(p['precision'])} %, "
            f"recall {_pct(p['recall'])} %, F1 {p['f1']:.3f}.\n\n")


def write_readme(out: Path, report: dict[str, Any]) -> None:
    """A short human-readable summary of TRAINING.json next to the checkpoints."""
    m = report["metrics"]
    ret, cap, vqa = m["retrieval"], m["caption"], m["vqa"]
    data = report["data"]
    rows = []
    for direction, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        for method, name in (("itc", "ITC cosine"), ("itm", f"ITC top-{ret['rerank_k']} + ITM rerank")):
            r = ret[direction][method]
            held = ret.get("held_out", {}).get(direction, {}).get(method, {})
            rows.append(f"| {label} | {name} | {_pct(r['r1'])} | {_pct(r['r5'])} | {_pct(r['r10'])} | {_pct(held.get('r1'))} |")
    held_out = ", ".join(f"{c} {s} on the {side}" for c, s, side in data["held_out_triples"])
    text = f"""# Shapes-world BLIP checkpoints

Three tiny BLIP models trained from scratch by `blipsearch.shapes.train` on the
synthetic scenes of `blipsearch.shapes.world` (two colored shapes, one left and
one right, on a light background, {data['image_size']}x{data['image_size']} px). They use
transformers' own classes and the Hugging Face hub layout, so they load exactly
like Salesforce's BLIP checkpoints, and let tests and demos show real retrieval,
captioning and VQA behaviour without downloading anything.

| folder | class | parameters | size (MB, fp32) |
|---|---|---|---|
| `retrieval/` | `BlipForImageTextRetrieval` (ITC 256-d + ITM) | {report['parameters']['retrieval']:,} | {report['checkpoint_mb']['retrieval']} |
| `caption/` | `BlipForConditionalGeneration` (prompt `"a picture of "`) | {report['parameters']['caption']:,} | {report['checkpoint_mb']['caption']} |
| `vqa/` | `BlipForQuestionAnswering` (question starts with `[ENC]`) | {report['parameters']['vqa']:,} | {report['checkpoint_mb']['vqa']} |

Each folder holds `config.json`, `model.safetensors`, a WordPiece vocabulary of
the world's words with BLIP's `[DEC]` (bos) and `[ENC]` tokens, and a
`BlipImageProcessor` config (bicubic resize to {data['image_size']} px, CLIP mean/std).

## How they were made

    {report['command']}

Seed {report['seed']}, {report['device']}, {report['wall_time_s']['training_total'] / 60:.1f} minutes of training
({data['train_images']:,} rendered training scenes over {data['train_combinations']} of the {data['all_combinations']} possible
object pairs). Retrieval: ITC (symmetric InfoNCE, learnable temperature, plus
each image against its caption with one attribute changed) and ITM with hard
negatives (ITC-mined in-batch images and texts, and captions with colors,
shapes or sides swapped). Captioning and VQA start from the retrieval model's
weights, as in BLIP, and train their text decoders on a frozen vision encoder.
Last, the retrieval model's text side gets more ITC + ITM steps on the frozen
vision encoder (ITM refinement), with partial descriptions ("a red circle",
matched by every scene that shows one) beside the whole captions. All settings and figures are in `TRAINING.json`.
{_refinement_note(report)}
Held out of training entirely: {held_out}. The test scenes below include them.

## Figures

Test split, {data['test_images']} scenes with pairwise distinct captions (one
correct item per query), {ret['held_out_queries']} of them containing a held-out combination.
Recall in percent; the last column is R@1 on the held-out queries only.

| direction | scoring | R@1 | R@5 | R@10 | held-out R@1 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Captioning exact match (beam {cap['num_beams']}): {_pct(cap['exact_match'])} % (held-out scenes: {_pct(cap['exact_match_held_out'])} %).
VQA accuracy (beam {vqa['num_beams']}, {vqa['n_questions']} questions): {_pct(vqa['accuracy'])} %; color {_pct(vqa['per_type']['color'])} %,
shape {_pct(vqa['per_type']['shape'])} %, yes/no {_pct(vqa['per_type']['yesno'])} % (held-out scenes: {_pct(vqa['accuracy_held_out'])} %).
Chance: color 1/6, shape 1/{len(world.SHAPES)}, yes/no 1/2.

{_partial_note(report)}{_errors_note(ret)}{_target_note(ret)}These are toy models for a toy world: they know {len(world.COLORS)} colors, {len(world.SHAPES)} shapes and two
positions, and nothing else.
"""
    (out / "README.md").write_text(text)
