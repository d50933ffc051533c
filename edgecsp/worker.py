"""python -m edgecsp.worker --head HOST:PORT [--name NAME] [--target T ...] [-- RAY START OPTIONS]

Join this device to the fleet's Ray cluster (docs/fleet.md). Detects what the device is (the
Jetson model and JetPack, or the CPU), the backends it really has (TensorRT, OpenVINO, ONNX
Runtime, with versions) and the targets it serves, then runs ``ray start`` with one custom
resource per target (``target:jetson-orin-nano``), ``edgecsp-device: 1`` (one nightly job at a
time) and labels (device, model, JetPack, backend versions, host). The command is printed before
it runs, with the EDGECSP_WORKER_* variables it passes to the node, so nothing is hidden.

Exit status: ray start's; 2 bad input (nothing to serve, Ray missing)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError


def _ray_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(x) for x in version("ray").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed: said by ray_executable
        return (0, 0)


def ray_executable() -> str:
    """The ``ray`` command of this Python's environment (the node must run the same Python)."""
    here = Path(sys.executable).with_name("ray")
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        from edgecsp.fleet import INSTALL_HINT

        raise EdgeCSPError(f"the ray command is not installed for {sys.executable}; {INSTALL_HINT}")
    return found


def start_command(head: str, info: dict, node_ip: str | None = None, num_cpus: int | None = None,
                  block: bool = False, extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(``ray start`` argv, the EDGECSP_WORKER_* variables for the node) for this device."""
    from edgecsp.fleet import device

    labels = device.labels(info)
    # Ray >= 2.40 reads labels as key=value pairs (JSON is deprecated there); earlier ones as JSON.
    label_arg = (",".join(f"{k}={v}" for k, v in labels.items()) if _ray_version() >= (2, 40)
                 else json.dumps(labels, separators=(",", ":")))
    argv = [ray_executable(), "start", f"--address={head}",
            "--resources=" + json.dumps(device.resources(info), separators=(",", ":")), f"--labels={label_arg}"]
    if node_ip:
        argv.append(f"--node-ip-address={node_ip}")
    if num_cpus is not None:
        argv.append(f"--num-cpus={num_cpus}")
    if block:
        argv.append("--block")
    argv += list(extra or [])
    env = {device.ENV_NAME: info["name"], device.ENV_TARGETS: ",".join(info["targets"]),
           device.ENV_BUILDER: "1" if info["builder"] else "0"}
    if info.get("tensorrt_standin"):
        env[device.ENV_STANDIN] = info["tensorrt_standin"]
    return argv, env


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.worker", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", required=True, help="the head's Ray address, HOST:PORT (ray start --head --port)")
    parser.add_argument("--name", help="this device's name in the history (default: host name + hardware hash)")
    parser.add_argument("--target", action="append", default=None,
                        help="serve this target instead of the detected ones (repeatable)")
    parser.add_argument("--only-build", action="store_true", help="serve no target: only build artifacts here")
    parser.add_argument("--tensorrt-standin", choices=["onnxruntime"], default=None,
                        help="where TensorRT is missing, run a Jetson bundle's ONNX model with ONNX Runtime "
                             "(testing the fleet without a Jetson; results are marked)")
    build = parser.add_mutually_exclusive_group()
    build.add_argument("--build", dest="builder", action="store_true", default=None,
                       help="build artifacts and bundles here (default: where PyTorch is installed, not on a Jetson)")
    build.add_argument("--no-build", dest="builder", action="store_false")
    parser.add_argument("--node-ip-address", help="this node's address as the head sees it")
    parser.add_argument("--num-cpus", type=opt.IntRange(0, 4096), help="CPUs Ray may use here")
    parser.add_argument("--block", action="store_true", help="stay in the foreground (systemd)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, do not run it")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)

    from edgecsp.fleet import device
    from edgecsp.targets import load_target

    for t in args.target or []:
        load_target(t)  # a typo fails here, not as a resource no job ever asks for
    if args.only_build and (args.target or args.builder is False):
        raise EdgeCSPError("--only-build serves no target and builds: it goes with neither --target nor --no-build")
    info = device.describe(name=args.name, targets=[] if args.only_build else args.target,
                           standin=args.tensorrt_standin or "", builder=True if args.only_build else args.builder)
    if not info["targets"] and not info["builder"]:
        raise EdgeCSPError("this machine serves no target (no ONNX Runtime, OpenVINO or Jetson found) and builds "
                           "nothing; install a backend or pass --target")
    cmd, env = start_command(args.head, info, args.node_ip_address, args.num_cpus, args.block, extra)
    print(f"device {info['name']}: {info['model']} ({info['arch']}), targets {', '.join(info['targets']) or 'none'}"
          f"{', builder' if info['builder'] else ''}; backends "
          + ", ".join(f"{k} {v}" for k, v in info["backends"].items()), flush=True)
    print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return subprocess.call(cmd, env={**os.environ, **env})


if __name__ == "__main__":
    sys.exit(cli.run(main))
