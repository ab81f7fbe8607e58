"""``splice-monitor config show``: the configuration ``run``, ``backfill`` or ``demo`` would use, with the layer
each value comes from (default, file, environment variable or flag), without starting anything."""

from __future__ import annotations

import argparse
import json

from workers.cli.settings import COMMANDS, add_settings_arguments, resolve


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("config", help="show the effective configuration of run/backfill/demo and where each value "
                                      "comes from", description=__doc__, allow_abbrev=False)
    actions = p.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print every setting, its value and its source (default, file, env, "
                                           "flag)", description=__doc__, allow_abbrev=False)
    show.add_argument("--for", dest="for_command", choices=COMMANDS, default="run",
                      help="whose configuration to show (default: %(default)s)")
    show.add_argument("--json", action="store_true", help="one JSON object: {setting: {value, source}}")
    add_settings_arguments(show, "all")
    show.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "for_command", "json", "func", "config_action")}
    resolved = resolve(args.for_command, argparse.Namespace(**given))
    if args.json:
        print(json.dumps(resolved.as_dict(), indent=2, default=str))
    else:
        print(resolved.format())
    return 0
