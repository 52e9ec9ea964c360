"""Bytes to bring a fleet up to date when devices miss rounds at random.

    python -m benchmarks.fleet --out=benchmarks/results/fleet

Trains a 10-round DPU run on the bundled MNIST digits with the int8 export
(k = 1 %, full round 0), then runs `tflite_edge.fleet.simulate`: 1,000
devices, each online at each release with probability 0.5 (and all of them
at the last), under four policies: chained per-round patches, one catch-up
patch, the whole file, and the cheapest of the three per device. Every
update is applied with the Python applier; the table says how many devices
end byte-identical to the latest file. Writes `<out>.json` and `<out>.md`.
"""

import json
import os
import tempfile

from absl import app, flags

from tf_dpu import RunConfig
from tf_dpu.data import load_dataset
from tflite_edge.fleet import Releases, format_table, simulate

_DEVICES = flags.DEFINE_integer("devices", 1000, "devices in the fleet")
_ONLINE = flags.DEFINE_list("online", ["0.2", "0.5", "0.8"],
                            "chances that a device is online at a release")
_SEED = flags.DEFINE_integer("seed", 1, "seed of the run and of the fleet")
_OUT = flags.DEFINE_string("out", "benchmarks/results/fleet", "output path, no extension")


def main(argv):
    del argv
    from tf_dpu.rounds import run  # pylint: disable=import-outside-toplevel
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        config = RunConfig(rounds=10, initial_samples=400, samples_per_round=400,
                           seed=_SEED.value, export_tflite=True, out_dir=folder)
        done = run(config, progress=None, data=load_dataset("mnist", 300, _SEED.value))
        releases = Releases(folder)
        sections = [f"{len(releases.releases)} releases (rounds "
                    f"{', '.join(str(r.round) for r in releases.releases)}); per-round "
                    f"patches {', '.join(str(r['sent_bytes']) for r in done.rounds[1:])} "
                    "bytes.\n"]
        for online in (float(p) for p in _ONLINE.value):
            found = simulate(releases, _DEVICES.value, online, _SEED.value)
            results[str(online)] = found
            table = format_table(found, releases.latest.size)
            sections.append(f"### {_DEVICES.value} devices, online with probability "
                            f"{online:g} at each release\n\n{table}\n")
            print(sections[-1], flush=True)
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(_OUT.value + ".md", "w") as f:
        f.write("\n".join(sections))


if __name__ == "__main__":
    app.run(main)
