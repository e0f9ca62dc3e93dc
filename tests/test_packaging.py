"""Packaging rules that only a real ComfyUI install would otherwise reveal."""
import ast

from conftest import ROOT


def test_pack_code_never_imports_bfr_core_absolutely():
    """In ComfyUI the pack is a package named after its folder: `bfr_core` is not importable there
    (tests see it only because pytest puts the repo root on sys.path), so inside bfr_core/ and nodes/
    every import of it must be relative."""
    offenders = []
    for folder in ("bfr_core", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names
                              if n == "bfr_core" or n.startswith("bfr_core.")]
    assert not offenders, offenders


def test_nodes_package_is_not_installed_as_top_level():
    """`nodes` must not be a top-level installed package: it would shadow ComfyUI's own nodes.py."""
    text = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["bfr_core", "bfr_core.*"]' in text
