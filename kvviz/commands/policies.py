"""``python -m kvviz policies``: every cache policy with its family, paper (and its link), parameters and
help; a plugin (``--policy-file``, ``KVVIZ_POLICY_PATH``, an entry point) also says where it came from,
and one that did not load is a warning on stderr (``kvviz.cli``)."""

from __future__ import annotations

import json

HELP = "list every cache policy with its family, parameters and help"


def configure(p) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def main(args) -> int:
    from kvviz.policies import plugin_source, registry

    described = [{**cls.describe(), "plugin": plugin_source(name)} for name, cls in registry().items()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for d in described:
        print(f"{d['name']}  [{d['family']}]  {d['paper']}")
        if d.get("paper_url"):
            print(f"    {d['paper_url']}")
        if d["plugin"]:
            print(f"    plugin: {d['plugin']}")
        print(f"    {d['summary']}")
        for prm in d["params"]:
            rng = f" choices {prm['choices']}" if prm["choices"] else ""
            if prm["min"] is not None or prm["max"] is not None:
                rng += f" range [{prm['min']}, {prm['max']}]"
            print(f"    --param {prm['name']}=<{prm['type']}>  default {prm['default']}{rng}: {prm['help']}")
        print()
    return 0
