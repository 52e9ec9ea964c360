"""Command line for model patches: create, apply, inspect, keygen.

    python -m tflite_edge.patch create --base=A.tflite --target=B.tflite --out=P [--round=N] [--sign_key=K]
    python -m tflite_edge.patch create --base=round_003/model.tflite --target=round_009/model.tflite --out=P
    python -m tflite_edge.patch apply --base=A.tflite --patch=P --out=B.tflite [--public_key=K] [--state=S]
    python -m tflite_edge.patch apply --base=M.tflite --patch=P --initial_round=0   # a new device
    python -m tflite_edge.patch inspect --patch=P
    python -m tflite_edge.patch keygen --private=K --public=K.pub

Any failure prints one line and exits with status 2; the base file is left as it was.
"""

import os
import sys

from tflite_edge import cli, patch_format
from tflite_edge.apply import (WHOLE_FILE_POLICIES, apply_patch_file, read_patch_file,
                               write_atomic)
from tflite_edge.create import create_patch_files
from tflite_edge.errors import PatchError
from tflite_edge.positions import entropy_bound_bits


def _parser():
    parser = cli.Parser(prog="python -m tflite_edge.patch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=cli.Parser)
    create = commands.add_parser("create", help="diff two models into a patch")
    create.add_argument("--base", required=True)
    create.add_argument("--target", required=True)
    create.add_argument("--out", required=True)
    create.add_argument("--round", type=int,
                        help="round the target belongs to (default: from a round_NNN folder "
                        "holding --target)")
    create.add_argument("--sign_key", help="Ed25519 private key (PEM) to sign with")
    apply = commands.add_parser("apply", help="apply a patch to a model")
    apply.add_argument("--base", required=True)
    apply.add_argument("--patch", required=True)
    apply.add_argument("--out", help="output model (default: replace --base safely)")
    apply.add_argument("--public_key", help="refuse patches not signed by this key")
    apply.add_argument("--state", help="device state file (round, model hash); default: the "
                       "output model's path + .state")
    apply.add_argument("--no_state", action="store_true",
                       help="do not check or record the device's round")
    apply.add_argument("--initial_round", type=int,
                       help="initialise a new device: its model belongs to this round (refused "
                       "once a state file exists)")
    apply.add_argument("--whole_file", default="signed", choices=WHOLE_FILE_POLICIES,
                       help="accept whole-file updates: only signed ones verified with "
                       "--public_key (default), always, or never")
    inspect = commands.add_parser("inspect", help="show a patch's header and records")
    inspect.add_argument("--patch", required=True)
    keygen = commands.add_parser("keygen", help="generate an Ed25519 key pair")
    keygen.add_argument("--private", required=True)
    keygen.add_argument("--public", required=True)
    return parser


def _target_round(args) -> int:
    """--round, or the NNN of the run folder round_NNN the target file sits in."""
    if args.round is not None:
        return args.round
    folder = os.path.basename(os.path.dirname(os.path.abspath(args.target)))
    if folder.startswith("round_") and folder[6:].isdigit():
        return int(folder[6:])
    raise PatchError(f"give --round: {args.target} is not in a round_NNN folder")


def describe(data: bytes) -> str:
    """A human-readable summary of a patch (header, records, sizes, bound)."""
    patch = patch_format.decode(data)
    h = patch.header
    lines = [f"patch format v{h.version}, round {h.round}, {patch.size} bytes, "
             f"{'signed' if h.signed else 'unsigned'}",
             f"base   {h.base_size} bytes sha256 {h.base_sha256.hex()}",
             f"result {h.result_size} bytes sha256 {h.result_sha256.hex()}",
             f"{h.record_count} records, body {h.body_length} bytes:"]
    position_bytes = bound = 0.0
    for record in patch.records:
        lines.append("  " + record.describe())
        if record.kind == patch_format.KIND_ELEMENTS:
            position_bytes += record.position_bytes
            bound += entropy_bound_bits(record.count, len(record.positions)) / 8
    if bound:
        lines.append(f"positions {position_bytes:.0f} B, information bound {bound:.0f} B "
                     f"({position_bytes / bound:.3f} x)")
    return "\n".join(lines)


def main(argv=None) -> int:
    return cli.run(_main, argv)


def _main(argv) -> None:
    args = _parser().parse_args(argv)
    if args.command == "create":
        signer = None
        if args.sign_key:
            from tflite_edge.signing import load_signer  # pylint: disable=import-outside-toplevel
            signer = load_signer(args.sign_key)
        data = create_patch_files(args.base, args.target, _target_round(args), signer)
        write_atomic(args.out, data)
        print(f"wrote {args.out}: {len(data)} bytes")
    elif args.command == "apply":
        key = None
        if args.public_key:
            from tflite_edge.signing import load_public_key  # pylint: disable=import-outside-toplevel
            key = load_public_key(args.public_key)
        state = None if args.no_state else (args.state or f"{args.out or args.base}.state")
        patch = apply_patch_file(args.base, args.patch, args.out, key, state,
                                 args.initial_round, args.whole_file)
        print(f"wrote {args.out or args.base}: {patch.header.result_size} bytes, verified, "
              f"round {patch.header.round}")
    elif args.command == "inspect":
        print(describe(read_patch_file(args.patch)))
    else:
        from tflite_edge.signing import generate_keypair  # pylint: disable=import-outside-toplevel
        generate_keypair(args.private, args.public)
        print(f"wrote {args.private} (keep secret) and {args.public}")


if __name__ == "__main__":
    sys.exit(main())
