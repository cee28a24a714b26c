"""Count the public functions of ``src/cxr`` that take or return a bare ``dict`` (issue 19): the loose records that
typed ones (``ModelSpec``, ``EvaluationResult``, ``ServeSettings``) replace. Run by ``make lint``; fails above the
budget.

A record is bare when its annotation says nothing of its values: ``dict``, ``dict[str, Any]`` or
``dict[str, object]`` (also inside ``| None``). A mapping with typed values (``dict[str, float]`` of per-label
scores, ``dict[str, Tensor]`` state dicts) is a typed mapping, not a record, and is not counted; ``--strict``
counts every ``dict`` annotation instead. Public: the name and every enclosing class name have no leading
underscore. Not counted either: the typed ``to_dict``/``from_dict`` boundaries of the file formats and the hooks
whose signatures PyTorch and Lightning fix (``state_dict``, ``load_state_dict``, ``on_save_checkpoint``,
``on_load_checkpoint``, ``CheckpointIO.save_checkpoint``).

    python tools/dict_api.py [--budget 30] [--list] [--strict]
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "cxr"
BOUNDARIES = {"to_dict", "from_dict", "state_dict", "load_state_dict", "on_save_checkpoint", "on_load_checkpoint",
              "save_checkpoint"}  # fmt: skip
UNTYPED_VALUES = {"Any", "object"}


def is_dict(annotation: ast.expr | None, strict: bool = False) -> bool:
    """Whether ``annotation`` is a bare dict (any ``dict`` with ``strict``)."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a string annotation
        annotation = ast.parse(annotation.value, mode="eval").body
    if isinstance(annotation, ast.BinOp):  # dict | None
        return is_dict(annotation.left, strict) or is_dict(annotation.right, strict)
    if isinstance(annotation, ast.Name):
        return annotation.id == "dict"
    if not (isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name)):
        return False
    if annotation.value.id != "dict":
        return False
    if strict:
        return True
    arguments = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
    value = arguments[-1]
    return isinstance(value, ast.Name) and value.id in UNTYPED_VALUES


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


def dict_functions(root: Path = SOURCE, strict: bool = False) -> tuple[list[str], int]:
    found, total = [], 0
    for path in sorted(root.rglob("*.py")):
        for function in public_functions(ast.parse(path.read_text())):
            total += 1
            if function.name in BOUNDARIES:
                continue
            arguments = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
            if is_dict(function.returns, strict) or any(is_dict(argument.annotation, strict) for argument in arguments):
                found.append(f"{path.relative_to(root.parent)}:{function.lineno} {function.name}")
    return found, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--strict", action="store_true", help="count every dict annotation, typed values too")
    args = parser.parse_args()
    found, total = dict_functions(strict=args.strict)
    if args.list:
        print("\n".join(found))
    kind = "dict" if args.strict else "bare dict"
    print(f"{len(found)} of {total} public functions take or return a {kind} (budget {args.budget})")
    return 0 if len(found) <= args.budget else 1


if __name__ == "__main__":
    sys.exit(main())
