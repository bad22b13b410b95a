"""Shapes-world retrieval recipe sweep: which settings let the tiny BLIP learn shapes?

    VARIANTS='{"base": {}, "b256": {"retrieval_batch": 256}}' N_TRAIN=20000 \
        OUT=out python benchmarks/shapes_sweep.py

Each variant (``blipsearch.shapes.recipe.Hyper`` overrides as JSON; ``sizes.X``
for model sizes, ``image_size`` for the world's resolution) trains only the
retrieval model, in its own process, all at once on one GPU (CPU works, slowly).
Each is scored on the 400-scene test split (``evaluate.retrieval_metrics``)
and by linear probes of the vision embedding (CLS token and mean patch token)
for the left/right shape and the left color. Results go to ``$OUT/sweep.json``;
variants still running at ``DEADLINE`` seconds are stopped and their last log
lines printed.
"""
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

VARIANTS = json.loads(os.environ.get("VARIANTS", "{}"))
N_TRAIN = int(os.environ.get("N_TRAIN", "20000"))


def set_path(hp, key, value):
    obj = hp
    parts = key.split(".")
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], value)


def render(args):
    size, start, count = args
    from blipsearch.shapes import world
    world.IMAGE_SIZE = size
    scenes = world.generate("train", count, 0, start=start)
    return [np.asarray(s.image, dtype=np.uint8) for s in scenes], [(s.left, s.right) for s in scenes]


def pool_file(size, n):
    path = f"/tmp/pool_{size}_{n}.npz"
    if not os.path.exists(path):
        step = max(1, min(1000, n // 8))
        chunks = [(size, i, min(step, n - i)) for i in range(0, n, step)]
        with ProcessPoolExecutor(min(14, os.cpu_count() or 1)) as ex:
            res = list(ex.map(render, chunks))
        imgs = np.concatenate([np.stack(r[0]) for r in res])
        pairs = [p for r in res for p in r[1]]
        np.savez(path, imgs=imgs, pairs=json.dumps(pairs))
    return path


def probe(model, pool, test_scenes, device):
    """Linear probes for left/right shape and left color from the CLS token and the mean patch token."""
    import torch
    import torch.nn.functional as F

    from blipsearch.shapes import world
    shapes = list(world.SHAPES); colors = list(world.COLORS)

    def feats(pixels):
        out_c, out_m = [], []
        with torch.no_grad():
            for i in range(0, len(pixels), 512):
                h = model.vision_model(pixel_values=pixels[i:i + 512]).last_hidden_state
                out_c.append(h[:, 0]); out_m.append(h[:, 1:].mean(1))
        return torch.cat(out_c), torch.cat(out_m)

    n = min(8000, len(pool))
    tr_c, tr_m = feats(pool.pixels(torch.arange(n), device))
    te_pix = torch.stack([torch.from_numpy(np.asarray(s.image, dtype=np.uint8)).permute(2, 0, 1) for s in test_scenes]).to(device).float() / 255
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=device)[:, None, None]
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=device)[:, None, None]
    te_c, te_m = feats((te_pix - mean) / std)
    ltr = [pool.pair(i) for i in range(n)]
    res = {}
    for fname, (xtr, xte) in {"cls": (tr_c, te_c), "mean": (tr_m, te_m)}.items():
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        xtr_n, xte_n = (xtr - mu) / sd, (xte - mu) / sd
        for target, get, names in (("lshape", lambda p: p[0][1], shapes), ("rshape", lambda p: p[1][1], shapes), ("lcolor", lambda p: p[0][0], colors)):
            ytr = torch.tensor([names.index(get(p)) for p in ltr], device=device)
            yte = torch.tensor([names.index(get((s.left, s.right))) for s in test_scenes], device=device)
            W = torch.zeros(xtr.shape[1], len(names), device=device, requires_grad=True)
            b = torch.zeros(len(names), device=device, requires_grad=True)
            opt = torch.optim.Adam([W, b], lr=0.01)
            for _ in range(300):
                loss = F.cross_entropy(xtr_n @ W + b, ytr) + 1e-4 * (W ** 2).sum()
                opt.zero_grad(); loss.backward(); opt.step()
            res[f"{fname}_{target}"] = round(((xte_n @ W + b).argmax(1) == yte).float().mean().item(), 3)
    return res


def run_variant(name, overrides):
    from pathlib import Path

    import torch
    from transformers import BlipImageProcessorPil

    from blipsearch.shapes import checkpoint, evaluate, objectives, recipe, world
    from blipsearch.shapes.data import Pool
    size = int(overrides.pop("image_size", 64))
    world.IMAGE_SIZE = size
    hp = recipe.Hyper()
    hp.train_images = N_TRAIN
    for k, v in overrides.items():
        set_path(hp, k, v)
    data = np.load(pool_file(size, hp.train_images))
    pairs = [tuple(map(tuple, p)) for p in json.loads(str(data["pairs"]))]
    pool = Pool.__new__(Pool)
    pool.objects = world.all_objects()
    index = {o: i for i, o in enumerate(pool.objects)}
    pool.images = torch.from_numpy(data["imgs"]).permute(0, 3, 1, 2).contiguous()
    pool.left = torch.tensor([index[l] for l, r in pairs])
    pool.right = torch.tensor([index[r] for l, r in pairs])
    pool.keys = pool.left * len(pool.objects) + pool.right
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = checkpoint.build_tokenizer(Path(f"/tmp/tok_{name}"))
    test = world.generate("test", 400, 0)
    processor = BlipImageProcessorPil(**{k: v for k, v in checkpoint.preprocessor_config().items() if k not in ("image_processor_type", "processor_class")})
    t = time.time()
    model = objectives.train_retrieval(pool, tok, hp, 0, device)
    wall = time.time() - t
    metrics = evaluate.retrieval_metrics(model, tok, processor, test, k=hp.rerank_k)
    pr = probe(model, pool, test, device)
    return {"name": name, "overrides": overrides, "image_size": size, "train_s": round(wall, 1),
            "t2i": metrics["t2i"], "i2t": metrics["i2t"], "held_out_t2i": metrics["held_out"]["t2i"], "probe": pr}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        name = sys.argv[2]
        res = run_variant(name, dict(VARIANTS[name]))
        print("RESULT " + json.dumps(res), flush=True)
        sys.exit(0)
    outdir = os.environ.get("OUT", "/tmp")
    sizes = sorted({int(v.get("image_size", 64)) for v in VARIANTS.values()})
    t0 = time.time()
    for s in sizes:
        pool_file(s, N_TRAIN)
    print(f"rendered in {time.time() - t0:.0f}s", flush=True)
    procs = {}
    deadline = t0 + float(os.environ.get("DEADLINE", "540"))
    for name in VARIANTS:
        log = open(f"/tmp/{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, __file__, "one", name], stdout=subprocess.PIPE, stderr=log, text=True,
                                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    results = []
    pending = dict(procs)
    while pending and time.time() < deadline:
        for name, p in list(pending.items()):
            if p.poll() is None:
                continue
            del pending[name]
            out = p.stdout.read()
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    results.append(r)
                    print(f"{r['name']:12s} {r['train_s']:6.0f}s t2i itc {r['t2i']['itc']['r1']:.3f}/{r['t2i']['itc']['r5']:.3f} itm {r['t2i']['itm']['r1']:.3f}/{r['t2i']['itm']['r5']:.3f} "
                          f"i2t itc {r['i2t']['itc']['r1']:.3f} itm {r['i2t']['itm']['r1']:.3f} probe {r['probe']}", flush=True)
            if p.returncode:
                print(name, "failed", p.returncode, open(f"/tmp/{name}.log").read()[-1500:], flush=True)
            with open(f"{outdir}/sweep.json", "w") as f:
                json.dump(results, f, indent=1)
        time.sleep(2)
    for name, p in pending.items():
        p.kill()
        lines = open(f"/tmp/{name}.log").read().splitlines()
        print(name, "unfinished:", " | ".join(lines[-3:]), flush=True)
    print(f"total {time.time() - t0:.0f}s", flush=True)
