"""python -m edgecsp.verify ARTIFACT --trusted KEYS   |   python -m edgecsp.verify --keygen DIR

Checks an artifact (directory or .tar.gz) the way a device should before running it: every
file's sha256, the manifest's own digest, the manifest against its engine, and its Ed25519
signature against the trusted public keys (a .pub/.pem file or a folder of them). Exit 0 and one
line naming the signing key when all hold; exit 2 and one line saying what failed otherwise.
--keygen writes a new key pair (edgecsp-signing.key, private, mode 0600; edgecsp-signing.pub)
for python -m edgecsp.compile --sign."""

from __future__ import annotations

import argparse
import sys

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.verify", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", nargs="?", type=opt.existing_path(), help="artifact directory or .tar.gz")
    parser.add_argument("--trusted", type=opt.existing_path(), action="append", default=[], metavar="KEYS",
                        help="trusted public key file or folder of them (repeatable)")
    parser.add_argument("--keygen", type=opt.OutPath(), metavar="DIR", help="write a new signing key pair into DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keygen is not None:
        if args.artifact is not None or args.trusted:
            parser.error("--keygen takes no artifact and no --trusted")
        from edgecsp.signing import generate_keypair, key_id, load_private_key

        private, public = generate_keypair(args.keygen)
        print(f"wrote {private} (private: keep it on the build machine) and {public} (give it to devices); "
              f"key id {key_id(load_private_key(private).public_key())}")
        return 0
    if args.artifact is None or not args.trusted:
        parser.error("give an ARTIFACT and --trusted KEYS (or --keygen DIR)")
    from edgecsp.artifact import open_artifact
    from edgecsp.gate import status_of
    from edgecsp.predictor import check_signature
    from edgecsp.signing import load_trusted_keys

    trusted = load_trusted_keys(args.trusted)
    root, manifest = open_artifact(args.artifact)
    kid = check_signature(root, manifest, trusted, required=True)
    print(f"ok: {args.artifact} is intact, its manifest matches its engine, signed by trusted key {kid}; "
          f"accuracy status {status_of(manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
