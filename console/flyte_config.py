"""``taskdeck flyte-config``: the config that points the stock ``flyte`` CLI (and ``flyte.init_from_config``)
at the running engine.

It names the engine's TLS listener, the CA that signed its certificate, and a command that prints the
owner's token (``authType: ExternalCommand``): the file holds no secret, so it may sit in a project tree.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from engine.client import InvalidNameError, check_run_id, read_endpoint

CONFIG_PATH = pathlib.Path(".flyte") / "config.yaml"


class FlyteConfigError(Exception):
    pass


def token_command(data_dir: pathlib.Path) -> list[str]:
    script = pathlib.Path(sys.executable).parent / "taskdeck"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "console.cli"]
    return [*base, "token", "--data-dir", str(data_dir)]


def render(data_dir: pathlib.Path, project: str, domain: str) -> str:
    try:
        check_run_id(project, domain, "r")
    except InvalidNameError as exc:
        raise FlyteConfigError(str(exc)) from None
    endpoint = read_endpoint(data_dir)
    if endpoint is None:
        raise FlyteConfigError(f"no engine serves {data_dir}: start one (`taskdeck --headless`, or `taskdeck` for "
                               "the console), then ask again")
    if not endpoint.get("flyteUrl"):
        raise FlyteConfigError("the running engine does not serve the flyte CLI (it was started without its TLS "
                               "listener)")
    host_port = endpoint["flyteUrl"].split("://", 1)[1]
    lines = [
        "# Written by `taskdeck flyte-config`: the flyte CLI drives the TaskDeck engine of",
        f"# {data_dir}. It holds no secret: the token comes from the command below, at need.",
        "admin:",
        f"  endpoint: dns:///{host_port}",
        "  insecure: false",
        f"  caCertFilePath: {json.dumps(endpoint['caFile'])}",
        "  authType: ExternalCommand",
        f"  command: {json.dumps(token_command(data_dir))}",
        "  disableKeyring: true",
        "image:",
        "  builder: local",
        "task:",
        f"  project: {project}",
        f"  domain: {domain}",
    ]
    return "\n".join(lines) + "\n"


def cmd_flyte_config(args: argparse.Namespace) -> int:
    text = render(args.data_dir, args.project, args.domain)
    if not args.write:
        sys.stdout.write(text)
        return 0
    target = pathlib.Path(args.path) if args.path else CONFIG_PATH
    if target.exists() and not args.force:
        raise FlyteConfigError(f"{target} exists: pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    print(f"wrote {target}: `flyte run FILE TASK`, `flyte get run` ... now use this engine", file=sys.stderr)
    return 0


def add_parser(command) -> None:
    parser = command("flyte-config", help="print (or --write) the config that points the stock flyte CLI at this "
                                          "engine")
    parser.add_argument("--project", default="flytesnacks")
    parser.add_argument("--domain", default="development")
    parser.add_argument("--write", action="store_true", help=f"write it to {CONFIG_PATH} (or --path)")
    parser.add_argument("--path", default=None, help="with --write: where")
    parser.add_argument("--force", action="store_true", help="with --write: replace an existing file")
