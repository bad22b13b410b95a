"""What a photo's place costs at index time: the first lookup (importing scipy, reading the GeoNames
data, building the k-d tree) in a fresh process, then each further lookup.

    python benchmarks/places.py [--lookups 20000] [--rounds 3]

Positions: random ones within about 10 km of random GeoNames places (where photos are taken), and as
many uniformly random ones on the globe (mostly sea: the far-from-everything case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import save

COLD = """
import json, resource, time
t = time.perf_counter()
from blipsearch.metadata.places import place_at
imported = time.perf_counter()
place = place_at(48.8566, 2.3522)
done = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"import_s": imported - t, "first_lookup_s": done - imported, "place": place.label,
                  "max_rss_mb": rss}))
"""


def cold() -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True, check=True, env=os.environ)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from blipsearch.metadata import places

    colds = [cold() for _ in range(args.rounds)]
    gazetteer = places._loaded()
    assert gazetteer is not None
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(gazetteer.cities), args.lookups)
    centres = np.degrees(np.arcsin(gazetteer.tree.data[picks, 2])), np.degrees(
        np.arctan2(gazetteer.tree.data[picks, 1], gazetteer.tree.data[picks, 0]))
    near = np.stack([np.clip(centres[0] + rng.normal(0, 0.06, args.lookups), -90, 90),
                     (centres[1] + rng.normal(0, 0.06, args.lookups) + 180) % 360 - 180], axis=1)
    anywhere = np.stack([np.degrees(np.arcsin(rng.uniform(-1, 1, args.lookups))),
                         rng.uniform(-180, 180, args.lookups)], axis=1)
    result: dict[str, object] = {"places": len(gazetteer.cities), "cold": colds}
    for name, positions in (("near_places", near), ("anywhere", anywhere)):
        times, named = [], 0
        for _ in range(args.rounds):
            start = time.perf_counter()
            found = [places.place_at(float(lat), float(lon)) for lat, lon in positions]
            times.append((time.perf_counter() - start) / len(positions))
            named = sum(1 for p in found if p is not None and p.city)
        result[name] = {"per_lookup_us": sorted(t * 1e6 for t in times), "with_city": named / len(positions)}
    print(json.dumps(result, indent=1))
    save("places", result)


if __name__ == "__main__":
    main()
