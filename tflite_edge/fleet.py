"""Serving a fleet whose devices sit at different rounds, and a simulation of one.

The server keeps every round's deployed file (`round_NNN/model.tflite` in a
run folder). A device reports the SHA-256 of its model (or its round); the
server answers with the cheapest of three updates, all of them patches that
the device verifies the same way (signature, round, base hash, result hash):

* `chain`: the per-round patches it missed, applied in order;
* `catchup`: one patch from its file straight to the latest;
* `full`: the whole latest file as one raw record (for when a patch would be
  bigger, e.g. after many rounds of a large update ratio).

    python -m tflite_edge.fleet plan --run_dir=runs/x --device_round=3 --out=update/
    python -m tflite_edge.fleet plan --run_dir=runs/x --device_sha256=HEX --json
    python -m tflite_edge.fleet simulate --run_dir=runs/x --devices=1000 --online=0.5 --out=sim.json

Catch-up patches are built on demand and kept in `run_dir/fleet/`, so a
thousand devices at round 3 cost one patch creation.
"""

import copy
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
from typing import Callable, Dict, List, Optional

import numpy as np
from absl import flags

from tflite_edge import cli, patch_format
from tflite_edge.apply import Policy, apply_to, next_state
from tflite_edge.files import write_atomic
from tflite_edge.create import create_patch_files, create_whole_file_patch
from tflite_edge.device_state import DeviceState
from tflite_edge.errors import PatchError
from tflite_edge.source import Source

POLICIES = ("chain", "catchup", "full", "cheapest")
_ROUND_DIR = re.compile(r"^round_(\d{3,})$")


@dataclasses.dataclass(frozen=True)
class Release:
    """A round whose deployed file differs from the one before."""

    round: int
    path: str
    sha256: bytes
    size: int


@dataclasses.dataclass
class Update:
    """What the server sends one device: patch files, applied in order."""

    policy: str
    from_round: int
    to_round: int
    patches: List[str]

    @property
    def bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.patches)


class Releases:
    """The deployed files of a run folder, and the updates between them.

    Args:
      run_dir: a run folder written with `--export_tflite`.
      signer: optional callable(bytes) -> Ed25519 signature for the patches
        built here (catch-up and full); per-round patches are used as written.
      version: the patch format the devices read (4, or 3 for appliers that
        read nothing newer); per-round patches of another format are not
        offered.

    Raises:
      PatchError: the folder holds no deployed files.
    """

    def __init__(self, run_dir: str, signer: Optional[Callable[[bytes], bytes]] = None,
                 version: int = patch_format.VERSION):
        if version not in patch_format.VERSIONS:
            raise PatchError(f"patch format {version} does not exist (versions "
                             f"{' and '.join(map(str, patch_format.VERSIONS))})")
        self.run_dir = run_dir
        self.signer = signer
        self.version = version
        self.cache = os.path.join(run_dir, "fleet")
        self.releases: List[Release] = []
        try:
            names = sorted(n for n in os.listdir(run_dir) if _ROUND_DIR.match(n))
        except OSError as e:
            raise PatchError(f"cannot read run folder {run_dir}: {e.strerror}") from None
        for name in names:
            path = os.path.join(run_dir, name, "model.tflite")
            if not os.path.exists(path):
                continue
            with Source.open(path) as source:
                digest, size = source.sha256(), source.size
            # A round that sent nothing left the file as it was: no release.
            if not self.releases or digest != self.releases[-1].sha256:
                self.releases.append(Release(int(_ROUND_DIR.match(name).group(1)), path,
                                             digest, size))
        if not self.releases:
            raise PatchError(f"{run_dir} holds no round_NNN/model.tflite "
                             "(run with --export_tflite)")

    @property
    def latest(self) -> Release:
        return self.releases[-1]

    def find(self, round_index: Optional[int] = None,
             sha256: Optional[bytes] = None) -> Release:
        """The release a device holds, by its model's hash or by its round.

        A round that sent nothing kept the file of the release before it, so
        a round maps to the latest release at or before it.
        """
        if sha256 is not None:
            found = [r for r in self.releases if r.sha256 == sha256]
            what = f"sha256 {sha256.hex()[:16]}..."
        else:
            found = [r for r in self.releases if r.round <= round_index]
            if round_index > self.latest.round:
                found = []
            what = f"round {round_index}"
        if not found:
            raise PatchError(f"no deployed file of {self.run_dir} has {what}; the device "
                             "needs a fresh install")
        return found[-1]

    def chain(self, device: Release) -> List[str]:
        """The per-round patches from `device` to the latest, as the run wrote them."""
        later = [r for r in self.releases if r.round > device.round]
        paths = [os.path.join(os.path.dirname(r.path), "update.patch") for r in later]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise PatchError(f"missing per-round patch {missing[0]}")
        for path in paths:
            version = _format_of(path)
            if version != self.version:
                raise PatchError(f"{path} is patch format {version}, and the devices read "
                                 f"format {self.version}: send a catch-up or a full update")
        return paths

    def chain_readable(self) -> bool:
        """Whether the run's per-round patches are in the format the devices read."""
        return all(_format_of(os.path.join(os.path.dirname(r.path), "update.patch"))
                   in (None, self.version) for r in self.releases[1:])

    def catchup(self, device: Release) -> str:
        """One patch from `device` straight to the latest (built once, then cached)."""
        return self._cached(f"catchup_{self._key(device)}.patch",
                            lambda: create_patch_files(device.path, self.latest.path,
                                                       self.latest.round, self.signer,
                                                       version=self.version))

    def full(self, device: Release) -> str:
        """The whole latest file as a patch: verified like any other update."""
        def build():
            with Source.open(device.path) as base, Source.open(self.latest.path) as target:
                return create_whole_file_patch(base, target, self.latest.round, self.signer,
                                               version=self.version)
        return self._cached(f"full_{self._key(device)}.patch", build)

    def update(self, device: Release, policy: str = "cheapest") -> Update:
        """The update for a device at `device` under `policy` (see POLICIES)."""
        if device.round == self.latest.round:
            return Update(policy, device.round, device.round, [])
        options = {
            "chain": lambda: self.chain(device),
            "catchup": lambda: [self.catchup(device)],
            "full": lambda: [self.full(device)],
        }
        if policy != "cheapest":
            return Update(policy, device.round, self.latest.round, options[policy]())
        candidates = []
        for name, build in options.items():
            try:
                candidates.append(Update(name, device.round, self.latest.round, build()))
            except PatchError:
                if name != "chain":   # per-round patches of another format: not offered
                    raise
        # Ties go to the fewest files (fewer round trips), then to the order above.
        return min(candidates, key=lambda u: (u.bytes, len(u.patches)))

    def as_of(self, step: int) -> "Releases":
        """The server as it was when release `step` (an index) was the latest."""
        view = copy.copy(self)
        view.releases = self.releases[:step + 1]
        return view

    def _key(self, device: Release) -> str:
        # Named by content, not by round: a run folder trained again under
        # the same round numbers must not serve patches of the old files.
        return (f"{device.round:03d}-{device.sha256.hex()[:16]}_to_"
                f"{self.latest.round:03d}-{self.latest.sha256.hex()[:16]}"
                f"{'_signed' if self.signer else ''}_v{self.version}")

    def _cached(self, name: str, build: Callable[[], bytes]) -> str:
        path = os.path.join(self.cache, name)
        if not os.path.exists(path):
            os.makedirs(self.cache, exist_ok=True)
            write_atomic(path, build())
        return path


def _format_of(path: str) -> Optional[int]:
    """The format version a patch file's header names (None: no such file)."""
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(6)[4:6], "little")
    except FileNotFoundError:
        return None


def apply_update(model: bytes, update: Update, public_key=None,
                 whole_file: str = "always", allow_unsigned: bool = False) -> bytes:
    """Applies an update's patches in order, as a device would (round checks included).

    Args:
      public_key: the device's key (raw 32 bytes); patches must be signed by it.
      whole_file: the device's policy for whole-file updates (see
        `tflite_edge.apply.WHOLE_FILE_POLICIES`); simulated devices take the
        ones the server plans.
      allow_unsigned: a device without a key that accepts unsigned patches.
    """
    policy = Policy(public_key, allow_unsigned, whole_file)
    state = DeviceState(update.from_round, hashlib.sha256(model).digest())
    for path in update.patches:
        with open(path, "rb") as f:
            data = f.read()
        out = io.BytesIO()
        patch = apply_to(Source.of(model), data, None, state, out.write, policy=policy)
        model = out.getvalue()
        state = next_state(patch, state, policy)
    return model


def simulate(releases: Releases, devices: int, online: float, seed: int = 0,
             policies=POLICIES) -> Dict[str, Dict]:
    """Runs a fleet through every release, devices missing rounds at random.

    Every device starts on the first release. At each later release each
    device is online with probability `online`; an online device gets the
    update the policy picks and applies it with the Python applier (state
    check, base hash, result hash). After the last release every device
    checks in once more, so all must end on the latest file.

    Returns:
      Per policy: total bytes, bytes per device (mean, median, 95th
      percentile, max), updates, patch files sent, and how many devices hold
      the latest file byte for byte. `chain` is left out when the run's
      per-round patches are not in the devices' format.
    """
    if not releases.chain_readable():
        policies = [p for p in policies if p != "chain"]
    rng = np.random.RandomState(seed)
    schedule = rng.rand(len(releases.releases), devices) < online
    schedule[-1] = True                 # the final check-in
    results = {}
    for policy in policies:
        first = releases.releases[0]
        with open(first.path, "rb") as f:
            files: Dict[bytes, bytes] = {first.sha256: f.read()}  # content-addressed
        held = [first] * devices
        sent = np.zeros(devices, np.int64)
        updates = patches = 0
        for step in range(1, len(releases.releases)):
            view = releases.as_of(step)
            for device in np.flatnonzero(schedule[step]):
                update = view.update(held[device], policy)
                if not update.patches:
                    continue
                # The simulation measures bytes: its devices check rounds and
                # hashes, not signatures (per-round patches are as trained).
                model = apply_update(files[held[device].sha256], update, allow_unsigned=True)
                sent[device] += update.bytes
                digest = hashlib.sha256(model).digest()
                files.setdefault(digest, model)
                held[device] = view.find(sha256=digest)
                updates += 1
                patches += len(update.patches)
        latest = releases.latest.sha256
        results[policy] = {
            "devices": devices, "total_bytes": int(sent.sum()),
            "mean_bytes": float(sent.mean()), "median_bytes": float(np.median(sent)),
            "p95_bytes": float(np.percentile(sent, 95)), "max_bytes": int(sent.max()),
            "updates": updates, "patch_files": patches,
            "on_latest": int(sum(h.sha256 == latest for h in held)),
            "files_match": all(files[h.sha256] == files[latest] for h in held),
        }
    return results


def format_table(results: Dict[str, Dict], model_bytes: int) -> str:
    """A Markdown table of `simulate`'s results."""
    lines = ["| policy | total bytes | mean per device | median | p95 | max | updates | "
             "patch files | on latest (byte-identical) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for policy, r in results.items():
        lines.append(
            f"| {policy} | {r['total_bytes']:,} | {r['mean_bytes']:,.0f} | "
            f"{r['median_bytes']:,.0f} | {r['p95_bytes']:,.0f} | {r['max_bytes']:,} | "
            f"{r['updates']:,} | {r['patch_files']:,} | {r['on_latest']}/{r['devices']}"
            f"{'' if r['files_match'] else ' (MISMATCH)'} |")
    lines.append(f"\nModel file: {model_bytes:,} bytes.")
    return "\n".join(lines)


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("run_dir", None, "a run folder written with --export_tflite",
                        flag_values=values)
    flags.DEFINE_integer("device_round", None, "the round the device reports", lower_bound=0,
                         flag_values=values)
    flags.DEFINE_string("device_sha256", None, "the SHA-256 (hex) of the device's model",
                        flag_values=values)
    flags.DEFINE_enum("policy", "cheapest", POLICIES, "which update to send",
                      flag_values=values)
    flags.DEFINE_string("out", None, "plan: folder to copy the update's patch files into, in "
                        "order; simulate: write the results here as JSON", flag_values=values)
    flags.DEFINE_string("sign_key", None, "Ed25519 private key for patches built here",
                        flag_values=values)
    flags.DEFINE_bool("json", False, "plan: print the update as one JSON line (for a serving "
                      "backend)", flag_values=values)
    flags.DEFINE_integer("devices", 1000, "simulated devices", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_float("online", 0.5, "chance that a device is online at each release",
                       lower_bound=0.0, upper_bound=1.0, flag_values=values)
    flags.DEFINE_integer("seed", 0, "seed of the simulation", flag_values=values)
    flags.DEFINE_enum("patch_format", str(patch_format.VERSION),
                      [str(v) for v in patch_format.VERSIONS], "the patch format the devices "
                      "read: catch-up and full updates are built in it, per-round patches in "
                      "another are not sent", flag_values=values)
    flags.mark_flags_as_mutual_exclusive(["device_round", "device_sha256"], required=False,
                                         flag_values=values)


def _releases(values) -> Releases:
    if not values["sign_key"].present:
        print("warning: no --sign_key: the patches built here are unsigned, and devices "
              "refuse them unless they run with --allow_unsigned", file=sys.stderr)
        return Releases(values["run_dir"].value, None, int(values["patch_format"].value))
    from tflite_edge.signing import load_signer  # pylint: disable=import-outside-toplevel
    return Releases(values["run_dir"].value, load_signer(values["sign_key"].value or ""),
                    int(values["patch_format"].value))


def _plan(values) -> None:
    if values["device_round"].value is None and values["device_sha256"].value is None:
        raise PatchError("plan needs --device_round or --device_sha256")
    releases = _releases(values)
    try:
        digest = (bytes.fromhex(values["device_sha256"].value)
                  if values["device_sha256"].value else None)
    except ValueError:
        raise PatchError("--device_sha256 must be 64 hex digits") from None
    device = releases.find(values["device_round"].value, digest)
    update = releases.update(device, values["policy"].value)
    if values["json"].value:
        print(json.dumps({"policy": update.policy, "from_round": update.from_round,
                          "to_round": update.to_round, "bytes": update.bytes,
                          "patches": update.patches,
                          "result_sha256": releases.latest.sha256.hex()}))
        return
    print(f"device at round {device.round}, latest round {releases.latest.round}: "
          f"{update.policy}, {len(update.patches)} file(s), {update.bytes} bytes")
    out = values["out"].value
    if out:
        os.makedirs(out, exist_ok=True)
        for i, path in enumerate(update.patches):
            with open(path, "rb") as f:
                write_atomic(os.path.join(out, f"{i:02d}.patch"), f.read())
        print(f"wrote {len(update.patches)} patch file(s) to {out}")


def _simulate(values) -> None:
    releases = _releases(values)
    results = simulate(releases, values["devices"].value, values["online"].value,
                       values["seed"].value)
    print(format_table(results, releases.latest.size))
    if values["out"].value:
        write_atomic(values["out"].value, json.dumps(results, indent=2).encode())


COMMANDS = {
    "plan": cli.Command("the update for one device", ("run_dir",),
                        ("device_round", "device_sha256", "policy", "out", "sign_key", "json",
                         "patch_format"), _plan),
    "simulate": cli.Command("a fleet that misses rounds at random", ("run_dir",),
                            ("devices", "online", "seed", "out", "sign_key", "patch_format"),
                            _simulate),
}


def main(argv=None) -> int:
    return cli.run("tflite_edge.fleet", COMMANDS, _define, argv)


if __name__ == "__main__":
    sys.exit(main())
