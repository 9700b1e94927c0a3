"""``python -m kvviz policies``: every cache policy with its family, paper (and its link), parameters and help."""

from __future__ import annotations

import json

HELP = "list every cache policy with its family, parameters and help"


def configure(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args) -> int:
    from kvviz.policies import registry

    described = [cls.describe() for cls in registry().values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for d in described:
        print(f"{d['name']}  [{d['family']}]  {d['paper']}")
        if d.get("paper_url"):
            print(f"    {d['paper_url']}")
        print(f"    {d['summary']}")
        for prm in d["params"]:
            rng = f" choices {prm['choices']}" if prm["choices"] else ""
            if prm["min"] is not None or prm["max"] is not None:
                rng += f" range [{prm['min']}, {prm['max']}]"
            print(f"    --param {prm['name']}=<{prm['type']}>  default {prm['default']}{rng}: {prm['help']}")
        print()
    return 0
