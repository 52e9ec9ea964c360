"""Command line for model patches: create, apply, inspect, keygen.

    python -m tflite_edge.patch keygen --private=K --public=K.pub
    python -m tflite_edge.patch create --base=A.tflite --target=B.tflite --out=P --sign_key=K [--round=N] [--expires_in=S]
    python -m tflite_edge.patch create --base=round_003/model.tflite --target=round_009/model.tflite --out=P --sign_key=K
    python -m tflite_edge.patch create --base=A.tflite --target=NEW.tflite --out=P --round=N --whole --sign_key=K
    python -m tflite_edge.patch rotate --base=M.tflite --round=N --sign_key=K --next_public_key=K2.pub --out=P
    python -m tflite_edge.patch apply --base=M.tflite --patch=P --public_key=K.pub --initial_round=0   # a new device
    python -m tflite_edge.patch apply --base=M.tflite --patch=P            # later: the state holds the key
    python -m tflite_edge.patch apply --base=A.tflite --patch=P --out=B.tflite --allow_unsigned --no_state
    python -m tflite_edge.patch inspect --patch=P

Any failure prints one line and exits with status 2; the base file is left as it was.
"""

import os
import sys
from typing import Optional

from absl import flags

from tflite_edge import cli, patch_format
from tflite_edge.apply import DEFAULT_MAX_ROUND_JUMP, WHOLE_FILE_POLICIES, Policy, apply_patch_file
from tflite_edge.create import (create_patch_files, create_rotation_patch,
                               create_whole_file_patch)
from tflite_edge.files import read_patch_file, write_atomic
from tflite_edge.source import Source
from tflite_edge.errors import PatchError
from tflite_edge.positions import entropy_bound_bits


def _define(values: flags.FlagValues) -> None:
    def string(name, text):
        flags.DEFINE_string(name, None, text, flag_values=values)
    string("base", "the model the patch applies to (apply), diffs from (create) or was made "
           "from (inspect: shows where a version-4 record writes)")
    string("target", "the model the patch must produce")
    string("out", "the patch to write (create); the output model (apply; default: "
           "replace --base safely)")
    string("patch", "the patch file")
    string("sign_key", "Ed25519 private key (PEM) to sign with")
    string("public_key", "refuse patches not signed by this key (raw 32 bytes); a device "
           "state that records a key uses that one")
    string("next_public_key", "rotate: the key (raw 32 bytes) that replaces --sign_key's")
    string("state", "device state file (round, model hash); default: the output model's "
           "path + .state")
    string("private", "where keygen writes the private key (PEM)")
    string("public", "where keygen writes the public key (raw 32 bytes)")
    flags.DEFINE_integer("round", None, "round the target belongs to (default: from a "
                         "round_NNN folder holding --target)", lower_bound=0,
                         upper_bound=patch_format.MAX_ROUND, flag_values=values)
    flags.DEFINE_integer("initial_round", None, "initialise a new device: its model belongs "
                         "to this round (refused once a state file exists)", lower_bound=0,
                         upper_bound=2 ** 32 - 1, flag_values=values)
    flags.DEFINE_bool("no_state", False, "do not check or record the device's round",
                      flag_values=values)
    flags.DEFINE_bool("allow_unsigned", False, "apply: accept patches without checking a "
                      "signature when the device knows no key (never the default)",
                      flag_values=values)
    flags.DEFINE_integer("now", None, "apply: the time in seconds since 1970 (default: the "
                         "system clock; 0: a device without a clock)", lower_bound=0,
                         flag_values=values)
    flags.DEFINE_integer("max_round_jump", DEFAULT_MAX_ROUND_JUMP, "apply: the most rounds an "
                         "unsigned patch may advance a device", lower_bound=1,
                         upper_bound=2 ** 32 - 1, flag_values=values)
    flags.DEFINE_integer("max_patch_bytes", patch_format.DEFAULT_MAX_PATCH_BYTES, "apply: the "
                         "largest update (a whole file) this device reads", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_integer("release_time", None, "create, rotate: the release time in seconds "
                         "since 1970 (default: now, or SOURCE_DATE_EPOCH)", lower_bound=0,
                         upper_bound=2 ** 64 - 1, flag_values=values)
    flags.DEFINE_integer("expires_in", None, "create, rotate: devices refuse the patch this "
                         "many seconds after its release (default: never)", lower_bound=1,
                         flag_values=values)
    flags.DEFINE_enum("patch_format", str(patch_format.VERSION),
                      [str(v) for v in patch_format.VERSIONS], "create, rotate: the patch "
                      "format to write: 5 (column and saturating codes), or 4 or 3 for "
                      "devices whose appliers read nothing newer", flag_values=values)
    flags.DEFINE_bool("whole", False, "create: replace the whole file (any size or "
                      "structure) instead of diffing weights", flag_values=values)
    flags.DEFINE_enum("whole_file", "signed", WHOLE_FILE_POLICIES, "apply: accept whole-file "
                      "updates only from signed patches verified with --public_key, always, "
                      "or never", flag_values=values)
    flags.register_multi_flags_validator(
        ["no_state", "state", "initial_round"],
        lambda f: not f["no_state"] or (f["state"] is None and f["initial_round"] is None),
        "--no_state excludes --state and --initial_round", flag_values=values)


def _target_round(values: flags.FlagValues) -> int:
    """--round, or the NNN of the run folder round_NNN the target file sits in."""
    if values["round"].value is not None:
        return values["round"].value
    target = values["target"].value
    folder = os.path.basename(os.path.dirname(os.path.abspath(target)))
    if folder.startswith("round_") and folder[6:].isdigit():
        return int(folder[6:])
    raise PatchError(f"give --round: {target} is not in a round_NNN folder")


def describe(data: bytes, base: Optional[bytes] = None) -> str:
    """A human-readable summary of a patch (header, records, sizes, bound).

    With the base, a version-4 record shows where it writes, its positions
    are decoded and the positions' information bound is given.
    """
    patch = patch_format.decode(data, base)
    h = patch.header
    lines = [f"patch format v{h.version}, round {h.round}, {patch.size} bytes, "
             + (f"signed by key id {h.key_id.hex()}" if h.signed else "unsigned"),
             f"released {h.release_time}, "
             + (f"expires {h.expires}" if h.expires else "never expires"),
             f"base   {h.base_size} bytes sha256 {h.base_sha256.hex()}",
             f"result {h.result_size} bytes sha256 {h.result_sha256.hex()}",
             f"{h.record_count} records, body {h.body_length} bytes:"]
    position_bytes = bound = 0.0
    for record in patch.records:
        lines.append("  " + record.describe())
        if record.kind == patch_format.KIND_ELEMENTS and record.positions is not None:
            position_bytes += record.position_bytes
            bound += entropy_bound_bits(record.count, len(record.positions)) / 8
    if bound:
        lines.append(f"positions {position_bytes:.0f} B, information bound {bound:.0f} B "
                     f"({position_bytes / bound:.3f} x)")
    return "\n".join(lines)


def _signer(values):
    """The signer of --sign_key, or None with one line on stderr: the patch is unsigned."""
    if not values["sign_key"].present:
        print("warning: no --sign_key: the patch is unsigned, and devices refuse it unless "
              "they run with --allow_unsigned", file=sys.stderr)
        return None
    from tflite_edge.signing import load_signer  # pylint: disable=import-outside-toplevel
    return load_signer(values["sign_key"].value or "")


def _release(values):
    """(release_time, expires) from --release_time and --expires_in."""
    release = values["release_time"].value
    release = patch_format.default_release_time() if release is None else release
    expires_in = values["expires_in"].value
    return release, (release + expires_in if expires_in else 0)


def _version(values) -> int:
    return int(values["patch_format"].value)


def _create(values) -> None:
    signer = _signer(values)
    release, expires = _release(values)
    base, target, out = values["base"].value, values["target"].value, values["out"].value
    if values["whole"].value:
        with Source.open(base) as b, Source.open(target, "target") as t:
            data = create_whole_file_patch(b, t, _target_round(values), signer, release,
                                           expires, _version(values))
    else:
        data = create_patch_files(base, target, _target_round(values), signer, release, expires,
                                  _version(values))
    write_atomic(out, data)
    print(f"wrote {out}: {len(data)} bytes, {'signed' if signer else 'UNSIGNED'}")


def _rotate(values) -> None:
    from tflite_edge.signing import load_public_key  # pylint: disable=import-outside-toplevel
    signer = _signer(values)
    if signer is None:
        raise PatchError("rotate needs --sign_key: the current key signs its successor")
    next_key = load_public_key(values["next_public_key"].value)
    release, expires = _release(values)
    with Source.open(values["base"].value) as base:
        data = create_rotation_patch(base, values["round"].value, signer, next_key, release,
                                     expires, _version(values))
    write_atomic(values["out"].value, data)
    print(f"wrote {values['out'].value}: {len(data)} bytes, key id {signer.key_id.hex()} "
          f"hands over to {patch_format.key_id(next_key).hex()}")


def _apply(values) -> None:
    key = None
    if values["public_key"].present:
        from tflite_edge.signing import load_public_key  # pylint: disable=import-outside-toplevel
        key = load_public_key(values["public_key"].value or "")
    base, out = values["base"].value, values["out"].value
    state = None if values["no_state"].value else (values["state"].value or f"{out or base}.state")
    policy = Policy(key, values["allow_unsigned"].value, values["whole_file"].value,
                    values["now"].value, values["max_round_jump"].value,
                    values["max_patch_bytes"].value)
    patch = apply_patch_file(base, values["patch"].value, out, state_path=state,
                             initial_round=values["initial_round"].value, policy=policy)
    trust = (f"verified (key id {patch.header.key_id.hex()})" if patch.verified
             else "UNSIGNED: no signature was checked")
    print(f"wrote {out or base}: {patch.header.result_size} bytes, {trust}, "
          f"round {patch.header.round}"
          + (", signing key rotated" if patch.next_key is not None else ""))


def _inspect(values) -> None:
    base = None
    if values["base"].value is not None:
        with Source.open(values["base"].value) as model:
            base = model.read(0, model.size)
    print(describe(read_patch_file(values["patch"].value), base))


def _keygen(values) -> None:
    from tflite_edge.signing import generate_keypair  # pylint: disable=import-outside-toplevel
    generate_keypair(values["private"].value, values["public"].value)
    print(f"wrote {values['private'].value} (keep secret) and {values['public'].value}")


COMMANDS = {
    "create": cli.Command("diff two models into a patch", ("base", "target", "out"),
                          ("round", "sign_key", "whole", "release_time", "expires_in",
                           "patch_format"), _create),
    "rotate": cli.Command("a patch, signed by the current key, that hands over to the next",
                          ("base", "round", "sign_key", "next_public_key", "out"),
                          ("release_time", "expires_in", "patch_format"), _rotate),
    "apply": cli.Command("verify a patch and apply it to a model", ("base", "patch"),
                         ("out", "public_key", "state", "no_state", "initial_round",
                          "whole_file", "allow_unsigned", "now", "max_round_jump",
                          "max_patch_bytes"), _apply),
    "inspect": cli.Command("show a patch's header and records", ("patch",), ("base",),
                           _inspect),
    "keygen": cli.Command("generate an Ed25519 key pair", ("private", "public"), (), _keygen),
}


def main(argv=None) -> int:
    return cli.run("tflite_edge.patch", COMMANDS, _define, argv)


if __name__ == "__main__":
    sys.exit(main())
