"""Count the public functions of ``src/cxr`` that take or return a bare ``dict`` (issue 19): the loose records that
typed ones (``ModelSpec``, ``EvaluationResult``, ``ServeSettings``) replace. Run by ``make lint``; fails above the
budget.

A function counts when a parameter or its return is annotated ``dict`` or ``dict[...]`` (a mapping typed as nothing
more than a dict). Public: the name and every enclosing class name have no leading underscore. Typed
``to_dict``/``from_dict`` boundaries of the file formats are not counted: they are where dicts belong.

    python tools/dict_api.py [--budget 30] [--list]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cxr"
BOUNDARIES = {"to_dict", "from_dict"}


def is_dict(annotation: ast.expr | None) -> bool:
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a string annotation
        text = annotation.value
        return text == "dict" or text.startswith("dict[") or text.startswith("dict |")
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    if isinstance(annotation, ast.BinOp):  # dict | None
        return is_dict(annotation.left) or is_dict(annotation.right)
    return isinstance(annotation, ast.Name) and annotation.id == "dict"


def _public(name: str) -> bool:
    return not name.startswith("_") or name == "__init__"


def public_functions(tree: ast.Module):
    def walk(node, public: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                yield from walk(child, public and not child.name.startswith("_"))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and public and _public(child.name):
                yield child

    yield from walk(tree, True)


def dict_functions(root: Path = SOURCE) -> tuple[list[str], int]:
    found, total = [], 0
    for path in sorted(root.rglob("*.py")):
        for function in public_functions(ast.parse(path.read_text())):
            total += 1
            if function.name in BOUNDARIES:
                continue
            arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
            if is_dict(function.returns) or any(is_dict(argument.annotation) for argument in arguments):
                found.append(f"{path.relative_to(root.parent)}:{function.lineno} {function.name}")
    return found, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    found, total = dict_functions()
    if args.list:
        print("\n".join(found))
    print(f"{len(found)} of {total} public functions take or return a bare dict (budget {args.budget})")
    return 0 if len(found) <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
