"""Applies a patch: verify everything, patch a copy, verify the result, replace atomically.

    from tflite_edge.apply import apply_patch_file
    apply_patch_file("model.tflite", "update.patch", "model.tflite", state_path="model.tflite.state")

Checks run in the order of `PATCH_FORMAT.md`: the patch's size and checksum,
its signature, the device's round, the base's size and SHA-256, and only then
are the records decoded, each bounded by the patch's own length and by the
base's real weight buffers (`tflite_edge.regions`). The base file is never
modified in place: the result goes to a temporary file in the same folder,
is flushed to disk, renamed over the output and the folder entry flushed, so
a crash at any moment leaves either the old or the new model. Files are
streamed a chunk at a time (`tflite_edge.source`).
"""

import dataclasses
import hashlib
import io
import os
import time
from typing import Callable, Iterator, List, Optional, Union

import numpy as np

from tflite_edge import patch_format
from tflite_edge import source as sources
from tflite_edge.device_state import MAX_RETIRED, DeviceState, StateFile
from tflite_edge.errors import PatchError
from tflite_edge.files import exclusive, refuse_dangling_link, write_atomic_stream
from tflite_edge.keys import check_public_key
from tflite_edge.model_file import ELEMENT_DTYPES
from tflite_edge.patch_format import KIND_ROTATION, KIND_WHOLE_FILE, Envelope, Patch, Record
from tflite_edge.regions import writable_regions
from tflite_edge.source import Source

# Whether a device takes whole-file updates: only from patches whose signature
# it verified (the default), always, or never.
WHOLE_FILE_POLICIES = ("signed", "always", "never")
# A device without a key (an explicit opt-in) takes no patch that jumps further
# than this: an unsigned patch for round 2^32 - 2 would otherwise refuse every
# genuine update after it.
DEFAULT_MAX_ROUND_JUMP = 16


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a device accepts.

    Attributes:
      public_key: the raw Ed25519 key that must sign every patch. A device
        state that records a key overrides it (rotations change that key).
      allow_unsigned: accept patches without checking any signature when no
        key is known; never the default.
      whole_file: `signed`, `always` or `never` (WHOLE_FILE_POLICIES).
      now: seconds since 1970 from a trusted clock; None for the system
        clock, 0 for a device without one (no expiry is checked then; release
        times still never go back).
      max_round_jump: on a device without a key, the most rounds one patch
        may advance it.
      max_patch_bytes: the largest whole-file update (and so patch) accepted.
    """

    public_key: Optional[bytes] = None
    allow_unsigned: bool = False
    whole_file: str = "signed"
    now: Optional[int] = None
    max_round_jump: int = DEFAULT_MAX_ROUND_JUMP
    max_patch_bytes: int = patch_format.DEFAULT_MAX_PATCH_BYTES

    def __post_init__(self):
        if self.whole_file not in WHOLE_FILE_POLICIES:
            raise PatchError(f"whole-file policy {self.whole_file!r} is not one of "
                             f"{', '.join(WHOLE_FILE_POLICIES)}")
        if self.public_key is not None:
            check_public_key(bytes(self.public_key))

    def clock(self) -> int:
        return int(time.time()) if self.now is None else self.now


def _policy(policy: Optional[Policy], public_key, whole_file: str, **kwargs) -> Policy:
    """The policy of an API call: a Policy given, or one from the legacy arguments."""
    if policy is not None:
        return policy
    return Policy(public_key=public_key, whole_file=whole_file, **kwargs)


def trusted_key(policy: Policy, state: Optional[DeviceState]) -> Optional[bytes]:
    """The key the device checks signatures with; refuses a key it no longer trusts.

    Raises:
      PatchError: the caller's key is not the one the device state records
        (a retired key, or another), or no key at all without the opt-in.
    """
    key = policy.public_key
    if state is not None and state.key is not None:
        if key is not None and bytes(key) != state.key:
            given = patch_format.key_id(key)
            how = ("was retired by a key rotation" if given in state.retired
                   else "is not the one this device trusts")
            raise PatchError(f"the given public key (key id {given.hex()}) {how}; the device "
                             f"state trusts key id {patch_format.key_id(state.key).hex()}")
        key = state.key
    if key is None and not policy.allow_unsigned:
        raise PatchError("no public key: give the device's key (--public_key), or accept "
                         "unsigned patches explicitly (--allow_unsigned)")
    return key


def verify(base: Union[bytes, Source], envelope: Envelope, policy: Optional[Policy] = None,
           state: Optional[DeviceState] = None) -> Patch:
    """Checks a patch against the device, in the spec's order; returns its records.

    Args:
      base: the device's model (bytes, or a `Source` hashed a chunk at a time).
      envelope: from `patch_format.open_envelope` or `read_envelope` (size,
        checksum and body hash verified).
      policy: what the device accepts (its key, whole-file updates, clock).
      state: when given, the device's round, model hash and trust: the patch
        must be newer, released no earlier than the last, unexpired, signed
        by the key the state trusts, and the state must describe this model.

    Raises:
      PatchError: unsigned or badly signed, signed by a retired or unknown
        key, expired, older than the last update, replayed or downgraded,
        wrong base, already applied, a malformed record or one outside the
        base's weight buffers, a refused whole-file update or rotation.
    """
    policy = policy or Policy()
    header = envelope.header
    key = trusted_key(policy, state)
    if key is not None:
        from tflite_edge import signing  # pylint: disable=import-outside-toplevel
        if not header.signed:
            raise PatchError("patch is not signed, but a public key was given")
        if header.key_id != patch_format.key_id(key):
            retired = state is not None and header.key_id in state.retired
            raise PatchError(f"patch is signed by {'a retired' if retired else 'another'} key "
                             f"(key id {header.key_id.hex()}; this device trusts "
                             f"{patch_format.key_id(key).hex()})")
        signing.verify(key, envelope.signed_part, envelope.signature)
    check_fresh(header, state.release_time if state else 0, policy.clock())
    if header.round > patch_format.MAX_ROUND:
        raise PatchError(f"patch is for round {header.round}, which is reserved (rounds go up "
                         f"to {patch_format.MAX_ROUND})")
    base = Source.of(base)
    digest = base.sha256()
    if digest == header.result_sha256 and digest != header.base_sha256:
        raise PatchError("patch is already applied: the model is its result")
    if state is not None:
        check_round(header, state.round, None if key else policy.max_round_jump)
        if state.sha256 != digest:
            raise PatchError(f"the device state describes another model (sha256 "
                             f"{state.sha256.hex()[:16]}..., this model {digest.hex()[:16]}...): "
                             "the model was replaced outside the updater")
    if base.size != header.base_size or digest != header.base_sha256:
        raise PatchError(f"patch is for another model (base sha256 "
                         f"{header.base_sha256.hex()[:16]}..., this model "
                         f"{digest.hex()[:16]}...)")
    whole = policy.whole_file == "always" or (policy.whole_file == "signed" and key is not None)
    patch = patch_format.decode_records(
        envelope, lambda: writable_regions(base.buffer, base.size), whole,
        allow_rotation=key is not None and state is not None)
    if patch.next_key is not None and patch.next_key == bytes(key):
        raise PatchError("the key rotation names the key that signed it")
    patch.verified = key is not None
    return patch


def check_fresh(header: patch_format.Header, last_release: int, now: int) -> None:
    """No older release than the last one applied; nothing expired by the device's clock.

    A device without a clock (`now` = 0) checks no expiry: it still refuses
    any release older than the last one it applied.
    """
    if header.release_time < last_release:
        raise PatchError(f"patch was released at {header.release_time}, before the last "
                         f"update this device applied ({last_release}): an older patch "
                         "cannot stand in for a newer one")
    if header.expires:
        if header.expires <= header.release_time:
            raise PatchError("patch expires before it is released")
        if now and header.expires <= now:
            raise PatchError(f"patch expired at {header.expires} (the device's time is "
                             f"{now}): ask the server for a fresh update")


def check_round(header: patch_format.Header, device_round: int,
                max_jump: Optional[int] = None) -> None:
    """No replay, no downgrade, and on a keyless device no jump that could freeze it.

    A patch must be for a newer round than the device's, except one that
    leaves the model as it is (a key rotation), which may keep the round.
    """
    patch_round = header.round
    keeps = header.base_sha256 == header.result_sha256 and header.base_size == header.result_size
    if patch_round < device_round or (patch_round == device_round and not keeps):
        raise PatchError(f"patch is for round {patch_round} but the device is at round "
                         f"{device_round} (replayed or downgraded)")
    if max_jump is not None and patch_round - device_round > max_jump:
        raise PatchError(f"patch jumps from round {device_round} to {patch_round}, more than "
                         f"the {max_jump} rounds an unsigned patch may advance a device")


def next_state(patch: Patch, state: Optional[DeviceState], policy: Policy) -> DeviceState:
    """The device's state once `patch` is applied: its round, model, release time and key."""
    h = patch.header
    key = trusted_key(policy, state)
    retired = state.retired if state else ()
    if patch.next_key is not None:
        retired = (retired + (patch_format.key_id(key),))[-MAX_RETIRED:]
        key = patch.next_key
    return DeviceState(h.round, h.result_sha256,
                       max(h.release_time, state.release_time if state else 0),
                       key if patch.verified else None, retired)


def apply_patch(base: bytes, patch_bytes: bytes, public_key=None,
                state: Optional[DeviceState] = None, whole_file: str = "signed", *,
                policy: Optional[Policy] = None, **policy_args) -> bytes:
    """Returns the patched model; raises PatchError without returning anything partial.

    Args:
      base: the model file the device holds.
      patch_bytes: the patch file.
      public_key: the raw Ed25519 key that must sign the patch.
      state: the device's round, model hash and trust; when given, patches
        that are not for a newer round are refused.
      whole_file: which whole-file updates to accept (WHOLE_FILE_POLICIES).
      policy: a `Policy` (then the three arguments above are ignored).
      **policy_args: other `Policy` fields (allow_unsigned, now, ...).
    """
    out = io.BytesIO()
    apply_to(Source.of(base), patch_bytes, None, state, out.write,
             policy=_policy(policy, public_key, whole_file, **policy_args))
    return out.getvalue()


def apply_to(base: Source, patch_bytes, public_key, state: Optional[DeviceState],
             write: Callable[[bytes], object], whole_file: str = "signed", *,
             policy: Optional[Policy] = None, **policy_args) -> Patch:
    """Verifies, then writes the patched model chunk by chunk and checks its hash.

    Raises PatchError before the first write when verification fails, and
    after the last one when the result's hash does not match (the caller
    discards what was written).

    Args:
      patch_bytes: the patch's bytes, or an `Envelope` already read.

    Returns:
      The decoded patch (its header holds the new round and hashes).
    """
    policy = _policy(policy, public_key, whole_file, **policy_args)
    envelope = patch_bytes if isinstance(patch_bytes, Envelope) else \
        patch_format.open_envelope(patch_bytes)
    patch = verify(base, envelope, policy, state)
    digest = hashlib.sha256()
    for chunk in patched_chunks(base, patch.records):
        digest.update(chunk)
        write(chunk)
    if digest.digest() != patch.header.result_sha256:
        raise PatchError("patched model does not match the patch's result hash; nothing written")
    return patch


def patched_chunks(base: Source, records: List[Record]) -> Iterator[bytes]:
    """The result's bytes in order, a chunk at a time.

    Element records are sorted, do not overlap and are aligned to their
    elements (`patch_format.decode_records` checks all three), so one sweep
    over the base suffices and no element straddles two chunks. A whole-file
    record is the result by itself.
    """
    records = [r for r in records if r.kind != KIND_ROTATION]
    if records and records[0].kind == KIND_WHOLE_FILE:
        raw = records[0].raw
        for start in range(0, len(raw), sources.CHUNK):
            yield raw[start:start + sources.CHUNK]
        return
    index = 0   # the first record not yet written in full
    for start, data in base.chunks():
        chunk = bytearray(data)
        end = start + len(chunk)
        while index < len(records) and records[index].offset < end:
            record = records[index]
            _write_part(chunk, start, end, record)
            if record.offset + record.span > end:
                break  # continues in the next chunk
            index += 1
        yield bytes(chunk)


def _write_part(chunk: bytearray, start: int, end: int, record: Record) -> None:
    """Writes the part of an element record that falls in the chunk [start, end)."""
    dtype = ELEMENT_DTYPES[record.element_type]
    size = dtype.itemsize
    first = max(0, (start - record.offset) // size)
    last = min(record.count, (end - record.offset) // size)
    lo, hi = np.searchsorted(record.positions, [first, last])
    if lo == hi:
        return
    view = np.frombuffer(chunk, np.uint8)
    at = record.offset + first * size - start
    target = view[at:at + (last - first) * size].reshape(-1, size)
    where = record.positions[lo:hi] - first
    values = record.values[lo:hi]
    if record.value_coding in (patch_format.VALUES_DELTA, patch_format.VALUES_ADAPTIVE,
                               patch_format.VALUES_SATURATING):
        old = target[where].copy().view(dtype).ravel()
        values = patch_format.add_deltas(old, values)
        if record.ends is not None:
            ends = record.ends[lo:hi]
            values = np.where(ends != 0, ends, values)
    target[where] = np.ascontiguousarray(values).view(np.uint8).reshape(-1, size)


def apply_patch_file(base_path: str, patch_path: str, out_path: Optional[str] = None,
                     public_key=None, state_path: Optional[str] = None,
                     initial_round: Optional[int] = None, whole_file: str = "signed", *,
                     policy: Optional[Policy] = None, **policy_args) -> Patch:
    """Applies a patch file to a model file; `out_path` may equal `base_path`.

    The patch is read once, its size bounded by the model's before its body
    is read (`patch_format.read_envelope`); the model is streamed: read,
    patched and written a chunk at a time. Applies to one output are
    serialised by a lock file beside the state file (or the output).

    With `state_path`, the device's round, model hash and trust are kept in
    that file (`tflite_edge.device_state`): it must exist (or `initial_round`
    creates it for a new device, trusting `public_key`), describe the base,
    and the patch must be for a newer round, no older than the last release,
    and signed by the key the state trusts. The new state is committed
    together with the model: it is written, marked pending, before the model
    is renamed into place, and resolved by the model's hash after a crash, so
    the two never disagree and a state that cannot be written leaves the
    model untouched.

    Args:
      public_key: the raw Ed25519 key patches must be signed with.
      whole_file: which whole-file updates to accept (WHOLE_FILE_POLICIES).
      policy: a `Policy` (then `public_key` and `whole_file` are ignored).
      **policy_args: other `Policy` fields: allow_unsigned, now,
        max_round_jump, max_patch_bytes.

    Returns:
      The applied patch (its header holds the new round, size and SHA-256;
      `verified` says whether a signature was checked).
    """
    policy = _policy(policy, public_key, whole_file, **policy_args)
    target = out_path or base_path
    refuse_dangling_link(target)
    lock = f"{state_path or os.path.realpath(target)}.lock"
    with Source.open(base_path) as probe:   # a missing model is named before anything else
        envelope = patch_format.read_envelope(patch_path, probe.size, policy.max_patch_bytes)
    states = StateFile(state_path) if state_path else None
    applied: List[Patch] = []
    loaded: List[DeviceState] = []

    def produce(write):
        state = states.load(base, initial_round, policy.public_key) if states else None
        loaded.append(state)
        applied.append(apply_to(base, envelope, None, state, write, policy=policy))

    def before_replace():
        # Without a state no rotation gets this far: decode_records refuses it.
        if states:
            states.prepare(next_state(applied[0], loaded[0], policy))

    with exclusive(lock), Source.open(base_path) as base:
        try:
            write_atomic_stream(target, produce, before_replace)
        except OSError as e:
            raise PatchError(f"cannot write {e.filename or target}: {e.strerror}; the model "
                             "is unchanged") from None
        if states:
            states.commit()
    return applied[0]
