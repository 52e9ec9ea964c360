"""Differential fuzzing of the patch appliers with a structure-aware mutator.

    python -m benchmarks.fuzz --inputs=1000000 --out=benchmarks/results/fuzz.json

Random bytes die at the checksum, so the mutator works on the patch's
structure: it takes a valid patch for the tiny int8 model of
`tests/fixtures/tiny_model.tflite`, changes record fields to interesting
values (offsets of other buffers, counts near 2^32, offsets near 2^64),
flips bits in the position and value streams, drops, duplicates, reorders
and inserts records (whole-file ones too), touches header fields, and then
seals the result again: body length, signature (with a test key) and
checksum are correct, and, for bodies the Python applier decodes, so is the
result hash (9 times in 10; the tenth keeps a wrong one). The Python
applier's verdict for every input is recorded beside it, and each other
applier must reach the same one on the same input:

* accepted: it writes exactly the declared result;
* refused at the result hash: it decoded and wrote the same body, whose
  hash is not the declared one;
* refused: it refused before writing anything.

So a body that one applier writes and another refuses is a failure, in
either direction. The C applier runs the inputs through `fuzz/batch.c`
(one process, under AddressSanitizer and UBSan in the tests), the JVM
applier through its `batch` command. Each batch simulates one device: with
or without a key, a whole-file policy, a round, the release time of its last
update and a clock (or none), so the trust checks are judged alike too.

One input in ten also tries changing storage on the C applier (the only one
that reads a patch more than once): after a random number of reads the
storage serves a second, differently mutated and sealed patch. The C applier
must then refuse, or accept with the first patch's verdict: it may never
produce anything but the result of the header it verified.
"""

import dataclasses
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

import numpy as np

from tflite_edge import patch_format, positions
from tflite_edge.apply import Policy, apply_to, patched_chunks, verify
from tflite_edge.files import write_atomic
from tflite_edge.device_state import DeviceState
from tflite_edge.errors import PatchError
from tflite_edge.patch_format import (ELEMENTS_RECORD, HEADER, KIND_ELEMENTS, KIND_ROTATION,
                                      KIND_WHOLE_FILE, ROTATION_RECORD, WHOLE_FILE_RECORD)
from tflite_edge.regions import writable_regions
from tflite_edge.source import Source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_DIR = os.path.join(ROOT, "tflite_edge", "c")
ACCEPTED, RESULT, REFUSED = 0, 1, 2
VERDICTS = ("accepted", "refused at the result hash", "refused")

# (offset, width) of the fields of each record kind's header.
_ELEMENT_FIELDS = [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 4),
                   (12, 8), (20, 4), (24, 4), (28, 4), (32, 4)]
_WHOLE_FILE_FIELDS = [(0, 1), (1, 1), (4, 8)]
_COMPACT_FIELDS = [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
# (offset, width) of header fields (after the magic), as mutation targets:
# version, flags, round, sizes, record count, release time, expiry, key id.
_HEADER_FIELDS = [(4, 2), (6, 2), (8, 4), (12, 8), (20, 8), (92, 4), (100, 8), (108, 8),
                  (116, 8)]
NO_SWITCH = 0xffffffff


def compact_numbers(data, at: int) -> Tuple[List[int], int]:
    """A compact record's numbers (four, and a column code's row length) and where its
    streams start (None: not readable)."""
    numbers, after = [], at + patch_format.COMPACT_RECORD.size
    columns = at + 2 < len(data) and data[at + 2] == positions.COLUMNS
    for _ in range(5 if columns else 4):
        try:
            number, after = patch_format.read_varint(data, after, len(data))
        except PatchError:
            return None, len(data)
        numbers.append(number)
    return numbers, after


def _streams_start(record: bytearray) -> int:
    """Where a record's data (streams, or a whole file's bytes) begins."""
    if record[0] == patch_format.KIND_COMPACT:
        return compact_numbers(record, 0)[1]
    return ELEMENTS_RECORD.size if record[0] == KIND_ELEMENTS else WHOLE_FILE_RECORD.size


def record_length(data, at: int) -> int:
    """The length a record at `at` declares (the rest of `data` if it cannot say)."""
    kind, rest = data[at], len(data) - at
    if kind == KIND_WHOLE_FILE and rest >= WHOLE_FILE_RECORD.size:
        return WHOLE_FILE_RECORD.size + struct.unpack_from("<Q", data, at + 4)[0]
    if kind == KIND_ROTATION:
        return ROTATION_RECORD.size
    if kind == patch_format.KIND_COMPACT:
        numbers, after = compact_numbers(data, at)
        return rest if numbers is None else after - at + numbers[2] + numbers[3]
    if rest >= ELEMENTS_RECORD.size:
        return ELEMENTS_RECORD.size + sum(struct.unpack_from("<II", data, at + 28))
    return rest


def _split(patch: bytes) -> Tuple[bytearray, List[bytearray], bool]:
    """A valid patch's header and the bytes of each record."""
    header = bytearray(patch[:HEADER.size])
    count, body_length = struct.unpack_from("<II", patch, 92)
    signed = bool(struct.unpack_from("<H", patch, 6)[0] & patch_format.FLAG_SIGNED)
    at = HEADER.size + (patch_format.SIGNATURE_SIZE if signed else 0)
    end, records = at + body_length, []
    for _ in range(count):
        length = record_length(patch[:end], at)
        records.append(bytearray(patch[at:at + length]))
        at += length
    assert at == end, "seed patches must be valid"
    return header, records, signed


def _seal(header: bytearray, body: bytes, signer, keep_count: bool, count: int) -> bytes:
    """Header lengths, body hash, signature and checksum made consistent with `body`."""
    header = bytearray(header)
    struct.pack_into("<I", header, 96, len(body))
    if not keep_count:
        struct.pack_into("<I", header, 92, count)
    header[124:156] = hashlib.sha256(body).digest()
    signed = struct.unpack_from("<H", header, 6)[0] & patch_format.FLAG_SIGNED
    content = bytes(header)
    if signed:
        content += signer(content) if signer else bytes(64)
    content += body
    return content + hashlib.sha256(content).digest()


class Mutator:
    """Mutates valid seed patches for one base model; every output is sealed again.

    Args:
      base: the base model the seeds apply to.
      seeds: valid patches for it.
      signer: signs the mutated patches (callable(bytes) -> 64 bytes), or None.
      seed: the random seed (an int or a sequence of ints).
    """

    def __init__(self, base: bytes, seeds: List[bytes], signer, seed,
                 next_key: bytes = bytes(32)):
        self.base = base
        self.next_key = next_key
        self.seeds = [_split(s) for s in seeds]
        self.signer = signer
        self.rng = np.random.RandomState(seed)
        regions = writable_regions(base, len(base)).values()
        self.offsets = sorted({r.offset for r in regions})
        self.counts = sorted({r.count for r in regions})
        self.buffers = sorted({r.buffer for r in regions})

    def _interesting(self, width: int, current: int) -> int:
        rng, size = self.rng, len(self.base)
        top = (1 << (8 * width)) - 1
        choices = [0, 1, 2, 3, 4, 7, 8, 9, 31, 32, top, top - 1, current + 1, current - 1,
                   current * 2, current // 2, int(rng.randint(0, 256))]
        if width >= 4:
            choices += [size, size - 1, 0x7fffffff, 0x80000000, 0xffffffff, 2 ** 32 - 100]
            choices += list(rng.choice(self.offsets + self.counts + self.buffers, 3))
        if width == 8:
            choices += [2 ** 64 - 2 ** 32 + 100, 2 ** 63, current + 4, current - 4]
        return int(choices[rng.randint(len(choices))]) & top

    def _set(self, data: bytearray, at: int, width: int) -> None:
        current = int.from_bytes(data[at:at + width], "little")
        data[at:at + width] = self._interesting(width, current).to_bytes(width, "little")

    def _set_number(self, record: bytearray) -> None:
        """Sets one of a compact record's numbers to an interesting value (any length)."""
        numbers, after = compact_numbers(record, 0)
        if numbers is None:
            return
        which = self.rng.randint(len(numbers))   # a column code's row length too
        numbers[which] = self._interesting(4, numbers[which])
        spelled = b"".join(patch_format.write_varint(n) for n in numbers)
        if self.rng.rand() < 0.1:   # a spelling the format forbids
            spelled = spelled[:-1] + bytes([spelled[-1] | 0x80, 0])
        record[patch_format.COMPACT_RECORD.size:after] = spelled

    def mutate(self) -> Tuple[bytearray, bytes, bool]:
        """(header, body, keep the header's record count) of one mutated patch."""
        rng = self.rng
        header, records, _ = self.seeds[rng.randint(len(self.seeds))]
        header = bytearray(header)
        records = [bytearray(r) for r in records]
        keep_count = False
        for _ in range(1 + rng.randint(3)):
            action = rng.randint(9)
            if action <= 2 and records:                       # a record field
                record = records[rng.randint(len(records))]
                if record[0] == patch_format.KIND_COMPACT and rng.rand() < 0.5:
                    self._set_number(record)
                    continue
                fields = {KIND_WHOLE_FILE: _WHOLE_FILE_FIELDS,
                          patch_format.KIND_COMPACT: _COMPACT_FIELDS}.get(record[0],
                                                                        _ELEMENT_FIELDS)
                at, width = fields[rng.randint(len(fields))]
                self._set(record, at, width)
            elif action == 3 and records:                     # a stream bit
                record = records[rng.randint(len(records))]
                start = _streams_start(record)
                if len(record) > start:
                    record[rng.randint(start, len(record))] ^= 1 << rng.randint(8)
            elif action == 4 and records:                     # a stream byte
                record = records[rng.randint(len(records))]
                start = _streams_start(record)
                if len(record) > start:
                    record[rng.randint(start, len(record))] = rng.randint(256)
            elif action == 5 and records:                     # shorter or longer streams
                record = records[rng.randint(len(records))]
                if rng.rand() < 0.5 and len(record) > 1:
                    del record[rng.randint(1, len(record)):]
                else:
                    record.extend(rng.randint(0, 256, rng.randint(1, 9)).astype(np.uint8))
            elif action == 6 and records:                     # the list of records
                op = rng.randint(5)
                i = rng.randint(len(records))
                if op == 0:
                    del records[i]
                elif op == 1:
                    records.insert(i, bytearray(records[i]))
                elif op == 2:
                    j = rng.randint(len(records))
                    records[i], records[j] = records[j], records[i]
                elif op == 3:
                    data = rng.randint(0, 256, rng.randint(0, 64)).astype(np.uint8).tobytes()
                    records.insert(i, bytearray(WHOLE_FILE_RECORD.pack(KIND_WHOLE_FILE,
                                                                       len(data)) + data))
                else:                                         # a key rotation, here or first
                    key = self.next_key if rng.rand() < 0.8 else bytes(32)
                    records.insert(0 if rng.rand() < 0.7 else i,
                                   bytearray(ROTATION_RECORD.pack(KIND_ROTATION, key)))
            elif action == 7:                                 # a header field
                at, width = _HEADER_FIELDS[rng.randint(len(_HEADER_FIELDS))]
                self._set(header, at, width)
                keep_count = keep_count or at == 92
            elif records:                                     # a record's kind
                records[rng.randint(len(records))][0] = [1, 2, 3, 4, 5, 0, 255][rng.randint(7)]
        return header, b"".join(bytes(r) for r in records), keep_count

    def case(self, device: "Setting") -> Tuple[bytes, int]:
        """A mutated, resealed patch and the Python applier's verdict on it."""
        header, body, keep_count = self.mutate()
        count = body_count(body)
        patch = _seal(header, body, self.signer, keep_count, count)
        result = decoded_result(self.base, patch, device)
        if result is not None and self.rng.rand() < 0.9:
            header[60:92] = hashlib.sha256(result).digest()
            patch = _seal(header, body, self.signer, keep_count, count)
        return patch, python_verdict(self.base, patch, device)


def body_count(body: bytes) -> int:
    """How many records a mutated body holds, walking their declared lengths."""
    at, count = 0, 0
    while at < len(body):
        at += max(1, record_length(body, at))
        count += 1
    return count


@dataclasses.dataclass(frozen=True)
class Setting:
    """One simulated device: its key, policies and trust state."""

    keyed: bool          # holds a public key (patches must be signed with it)
    whole_file: str      # whole-file policy
    round: int = 0       # the round of its model
    release_time: int = 1000   # of the last update it applied
    now: int = 0         # its clock (0: none)
    key: bytes = b""     # the key, when keyed
    unsigned_ok: bool = True   # keyless: opted in to unsigned patches (else nothing applies)

    def policy(self) -> Policy:
        return Policy(self.key if self.keyed else None, not self.keyed and self.unsigned_ok,
                      self.whole_file, self.now)

    def state(self, base: bytes) -> DeviceState:
        return DeviceState(self.round, hashlib.sha256(base).digest(), self.release_time,
                           self.key if self.keyed else None)

    def options(self) -> int:
        whole = self.whole_file == "always" or (self.whole_file == "signed" and self.keyed)
        return (1 if whole else 0) | (2 if not self.keyed and self.unsigned_ok else 0)


SETTINGS = (Setting(True, "signed"), Setting(False, "always", now=2_000_000_000),
            Setting(False, "never", round=2), Setting(True, "never", now=1_790_000_500),
            Setting(False, "always", unsigned_ok=False))


def decoded_result(base: bytes, patch: bytes, device: Setting) -> Optional[bytes]:
    """The bytes the Python applier would write for `patch`, None if it refuses them."""
    try:
        envelope = patch_format.open_envelope(patch)
        parsed = verify(base, envelope, device.policy(), device.state(base))
    except PatchError:
        return None
    return b"".join(patched_chunks(Source.of(base), parsed.records))


def python_verdict(base: bytes, patch: bytes, device: Setting) -> int:
    """What the Python applier does with `patch`: ACCEPTED, RESULT or REFUSED."""
    written = []
    try:
        apply_to(Source.of(base), patch, None, device.state(base), written.append,
                 policy=device.policy())
    except PatchError:
        return RESULT if written else REFUSED
    return ACCEPTED


def write_batch(path: str, base: bytes, device: Setting,
                cases: List[Tuple[bytes, int, int, bytes]]) -> None:
    """The batch file format of fuzz/batch.c (and the JVM applier's `batch`).

    Each case is (patch, verdict, reads before the storage changes or
    NO_SWITCH, the patch it changes to).
    """
    out = io.BytesIO()
    out.write(b"DPUC" + struct.pack("<I", len(base)) + base)
    out.write(bytes([1 if device.keyed else 0]) + (device.key if device.keyed else bytes(32))
              + bytes([device.options()]))
    out.write(struct.pack("<IQQ", device.round, device.release_time, device.now))
    out.write(struct.pack("<I", len(cases)))
    for patch, verdict, switch, second in cases:
        out.write(struct.pack("<IB", len(patch), verdict) + patch)
        out.write(struct.pack("<II", switch, len(second)) + second)
    write_atomic(path, out.getvalue())


def generate(folder: str, inputs: int, seed: int, batch_size: int = 10000,
             progress: Callable[[str], None] = lambda line: None) -> dict:
    """Writes batch files of mutated patches with the Python applier's verdicts.

    Returns:
      {"files": [...], "verdicts": {name: count}, "python_seconds": s, ...}.
    """
    sys.path.insert(0, os.path.join(C_DIR, "fuzz"))
    import make_seeds  # pylint: disable=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ed25519  # pylint: disable=import-outside-toplevel
    from tflite_edge.signing import Signer  # pylint: disable=import-outside-toplevel
    signer = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"dpu fuzz key %d" % seed).digest()))
    next_key = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"dpu fuzz next key %d" % seed).digest())).public_key
    base = make_seeds.fuzz_base()
    seeds = make_seeds.seed_patches()
    counts = np.zeros(3, np.int64)
    files, python_seconds, number, switched = [], 0.0, 0, 0
    while number * batch_size < inputs:
        setting = SETTINGS[number % len(SETTINGS)]
        if setting.keyed:
            setting = dataclasses.replace(setting, key=signer.public_key)
        device_signer = signer if setting.keyed else None
        signed_seeds = [_resign(s, device_signer) for s in seeds] if device_signer else seeds
        mutator = Mutator(base, signed_seeds, device_signer, [seed, number], next_key)
        size = min(batch_size, inputs - number * batch_size)
        started = time.process_time()
        cases = []
        for _ in range(size):
            patch, verdict = mutator.case(setting)
            switch, second = NO_SWITCH, b""
            if mutator.rng.rand() < 0.1:
                second, _ = mutator.case(setting)
                switch = int(mutator.rng.randint(1, 12))
                switched += 1
            cases.append((patch, verdict, switch, second))
        python_seconds += time.process_time() - started
        for _, verdict, _, _ in cases:
            counts[verdict] += 1
        path = os.path.join(folder, f"batch_{number:04d}.bin")
        write_batch(path, base, setting, cases)
        files.append(path)
        number += 1
        progress(f"{min(number * batch_size, inputs)} inputs judged by the Python applier")
    return {"files": files, "inputs": int(inputs), "python_seconds": python_seconds,
            "changing_storage": switched,
            "verdicts": {name: int(c) for name, c in zip(VERDICTS, counts)}}


def _resign(patch: bytes, signer) -> bytes:
    """An unsigned seed, signed."""
    header = bytearray(patch[:HEADER.size])
    struct.pack_into("<H", header, 6, patch_format.FLAG_SIGNED)
    header[116:124] = signer.key_id
    body_length, count = struct.unpack_from("<I", patch, 96)[0], struct.unpack_from("<I", patch, 92)[0]
    return _seal(header, patch[HEADER.size:HEADER.size + body_length], signer, False, count)


def build_c_batch(out_dir: str, sanitized: bool) -> str:
    """Builds the C differential driver (with the sanitizers, or optimised)."""
    name = "dpu_batch" if sanitized else "dpu_batch_fast"
    subprocess.run(["make", "-s", "-C", C_DIR, f"OUT={out_dir}", f"{out_dir}/{name}"],
                   check=True, capture_output=True, text=True)
    return os.path.join(out_dir, name)


def run_batches(command: List[str], files: List[str]) -> Tuple[str, float]:
    """Runs an applier's batch command over the files; raises on a disagreement."""
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=1:detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    started = time.time()
    proc = subprocess.run(command + files, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{command[0]} failed ({proc.returncode}): "
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout.strip(), time.time() - started


def main(argv=None) -> int:
    from absl import flags  # pylint: disable=import-outside-toplevel
    del argv
    settings = flags.FLAGS
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        judged = generate(folder, settings.inputs, settings.seed,
                          progress=lambda line: print(line, flush=True))
        results["python"] = {"inputs": judged["inputs"], "verdicts": judged["verdicts"],
                             "seconds": round(judged["python_seconds"], 1)}
        c_batch = build_c_batch(folder, sanitized=settings.sanitizers)
        line, seconds = run_batches([c_batch], judged["files"])
        results["c"] = {"inputs": judged["inputs"], "summary": line,
                        "sanitizers": settings.sanitizers, "seconds": round(seconds, 1)}
        print(f"C applier: {line} ({seconds:.0f} s)", flush=True)
        from benchmarks import jvm  # pylint: disable=import-outside-toplevel
        jar = jvm.build()
        if jar:
            line, seconds = run_batches(["java", "-jar", jar, "batch"], judged["files"])
            results["java"] = {"inputs": judged["inputs"], "summary": line,
                               "seconds": round(seconds, 1)}
            print(f"JVM applier: {line} ({seconds:.0f} s)", flush=True)
        else:
            # Said, not skipped in silence: a run without the JVM proves less.
            results["java"] = {"inputs": 0, "summary": "not run: no mvn or java here"}
            print("JVM applier: not run (no mvn or java here)", flush=True)
    print(json.dumps(results, indent=2))
    if settings.out:
        write_atomic(settings.out, (json.dumps(results, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    from absl import app, flags as absl_flags  # pylint: disable=ungrouped-imports
    absl_flags.DEFINE_integer("inputs", 1000000, "mutated patches per applier")
    absl_flags.DEFINE_integer("seed", 1, "random seed of the mutator")
    absl_flags.DEFINE_bool("sanitizers", False, "run the C applier under ASan and UBSan "
                           "(slower)")
    absl_flags.DEFINE_string("out", None, "write the results as JSON here")
    app.run(main)
