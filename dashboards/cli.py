"""``splice-monitor dashboards render|push``: regenerate the Grafana dashboards, Prometheus rules and Grafana alert
provisioning from code, or push dashboards and alert rules to a running Grafana with grafana-client."""

from __future__ import annotations

import argparse
import sys

DEFAULT_OUTPUT = "dashboards-out"


def register(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "dashboards", help="render or push Grafana dashboards and alert rules",
        description="Regenerate the Grafana dashboards, Prometheus rules and Grafana alert provisioning from code "
                    "(render), or push dashboards and alert rules to a running Grafana (push).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    render = actions.add_parser("render", help="write the generated dashboards/rules files")
    render.add_argument("-o", "--output", metavar="DIR", default=None,
                        help=f"output directory (default: ./{DEFAULT_OUTPUT}); files go to DIR/rules/ and "
                             "DIR/generated/. Never the installed package: in a checkout, `-o dashboards` "
                             "regenerates the committed copies")
    render.add_argument("--datasource-uid", default="prometheus",
                        help="Prometheus data source uid for the Grafana alert rules (default: %(default)s)")
    render.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any file under -o DIR (default: the copies shipped in the "
                             "package) is out of date")
    render.set_defaults(func=run_render)

    push = actions.add_parser("push", help="create/overwrite the dashboards (and alert rules) in Grafana")
    push.add_argument("--grafana-url", required=True, help="e.g. https://grafana.example.com")
    push.add_argument("--token", default=None,
                      help="Grafana service account token (Editor or Admin); default: the GRAFANA_TOKEN environment "
                           "variable, which keeps the token out of shell history and process listings")
    push.add_argument("--folder-uid", default="splice-monitor", help="folder uid, created if missing")
    push.add_argument("--folder-title", default="splice-monitor", help="folder title when it is created")
    push.add_argument("--datasource-uid", default="prometheus",
                      help="Prometheus data source uid for the alert rules (default: %(default)s)")
    push.add_argument("--no-alerts", action="store_true", help="push dashboards only")
    push.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    push.set_defaults(func=run_push, push_parser=push)
    return parser


def run_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    import dashboards

    files = dashboards.render_files(datasource_uid=args.datasource_uid)
    if args.check:
        root = Path(args.output) if args.output else dashboards.PACKAGE_DIR  # reading the package is harmless
        stale = [rel for rel, text in files.items()
                 if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text]
        for rel in stale:
            print(f"out of date: {root / rel}", file=sys.stderr)
        return 1 if stale else 0
    # Writing into site-packages would silently change what the next `helm package` or `push` ships, and fail
    # on a read-only install: the default is a directory of the user's own.
    root = Path(args.output) if args.output else Path.cwd() / DEFAULT_OUTPUT
    for path in dashboards.render(root, datasource_uid=args.datasource_uid):
        print(path)
    return 0


TOKEN_ENV = "GRAFANA_TOKEN"


def run_push(args: argparse.Namespace) -> int:
    import os

    token = args.token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        # parser.error prints usage and exits 2, like any other missing required argument
        args.push_parser.error(f"no Grafana token: pass --token TOKEN or set the {TOKEN_ENV} environment variable "
                               "(a service account token with the Editor or Admin role)")
    summary = push(args.grafana_url, token, folder_uid=args.folder_uid, folder_title=args.folder_title,
                   datasource_uid=args.datasource_uid, alerts=not args.no_alerts, timeout=args.timeout)
    for line in summary:
        print(line)
    return 0


def push(grafana_url: str, token: str, *, folder_uid: str = "splice-monitor", folder_title: str = "splice-monitor",
         datasource_uid: str = "prometheus", alerts: bool = True, timeout: float = 10.0) -> list[str]:
    """Create the folder if needed, overwrite every dashboard, and replace the alert rule group."""
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaClientError

    from dashboards.build import DASHBOARDS, dashboard_json
    from dashboards.ruleset import RuleConfig, build_grafana_alerting, duration_seconds

    api = GrafanaApi.from_url(grafana_url, credential=token, timeout=timeout)
    done = []
    try:
        api.folder.get_folder(folder_uid)
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.folder.create_folder(folder_title, uid=folder_uid)
        done.append(f"created folder {folder_uid}")
    for name in DASHBOARDS:
        model = dashboard_json(name)
        api.dashboard.update_dashboard({"dashboard": model, "folderUid": folder_uid, "overwrite": True,
                                        "message": "splice-monitor dashboards push"})
        done.append(f"dashboard {model['uid']}")
    if alerts:
        cfg = RuleConfig()
        group = build_grafana_alerting(cfg, datasource_uid=datasource_uid)["groups"][0]
        rules = [dict(r, folderUID=folder_uid, ruleGroup=group["name"], orgID=group["orgId"])
                 for r in group["rules"]]
        api.alertingprovisioning.update_rule_group(
            folder_uid, group["name"],
            {"title": group["name"], "folderUid": folder_uid, "interval": duration_seconds(cfg.interval),
             "rules": rules})
        done.append(f"alert rule group {group['name']} ({len(rules)} rules)")
    return done
