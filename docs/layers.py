"""Print nfit's layers, as pyproject.toml's import-linter contract declares them, as a text diagram.

    python docs/layers.py > docs/layers.txt

Reads the first "layers" contract of [tool.importlinter]; the diagram is drawn from it, so it
cannot drift from what `lint-imports` checks. Standard library only (tomllib: Python 3.11+).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser under its old name, if installed
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
GAP = 2  # spaces between sibling boxes


def read_contract(path: Path) -> tuple[str, str, list[str]]:
    """(root package, contract name, layers from the top) of the first layers contract."""
    config = tomllib.loads(path.read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c.get("type") == "layers")
    return config["root_package"], contract["name"], contract["layers"]


def boxes(layer: str, root: str) -> list[str]:
    """The box labels of one layer: one per independent ("|") sibling; ":" siblings (which may
    import each other) share a box."""
    def short(name: str) -> str:
        name = name.strip()
        return name[len(root) + 1:] if name.startswith(root + ".") else name

    return [" : ".join(short(n) for n in part.split(":")) for part in layer.split("|")]


def row(labels: list[str], width: int) -> str:
    """One line drawing ``labels`` as boxes side by side, centred in ``width``."""
    return (" " * GAP).join(f"[ {s} ]" for s in labels).center(width).rstrip()


def diagram(root: str, name: str, layers: list[str]) -> list[str]:
    rows = [boxes(layer, root) for layer in layers]
    width = max(sum(len(s) + 4 for s in r) + GAP * (len(r) - 1) for r in rows)
    lines = [f"{name}  ({root}.*, top to bottom)", ""]
    for i, labels in enumerate(rows):
        if i:
            lines.append("v".center(width).rstrip())
        lines.append(row(labels, width))
    lines += [
        "",
        "v: imports point down. A module imports from layers below its own (any of them),",
        "never from above. Boxes on one line are independent: they never import each other.",
    ]
    return lines


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else PYPROJECT
    print("\n".join(diagram(*read_contract(path))))


if __name__ == "__main__":
    main()
