"""Sphinx configuration of the pyro-lfvi API reference.

Build with warnings as errors (as ``.ci/run`` does)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import importlib
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import pyro_lfvi

project = "pyro-lfvi"
author = "pyro-lfvi developers"
copyright = "pyro-lfvi developers"
release = pyro_lfvi.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

# Docstrings follow Pyro's style: reST field lists (``:param type name:``) carry
# the types, and the class docstring documents the constructor's arguments.
# Signatures leave the annotations out: the docstrings give the types, and the
# postponed (string) annotations name modules by their local aliases.
autoclass_content = "class"
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_preserve_defaults = True
# A method without its own docstring stays undocumented rather than showing the
# docstring of torch's or Pyro's method that it overrides (``forward``, ``expand``).
autodoc_inherit_docstrings = False

# Every cross-reference into pyro_lfvi must resolve (``-W`` makes a broken one an
# error). The builds run offline (no intersphinx), so references to other
# packages' objects cannot resolve and are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|pyro|numpy|np|arviz|az|xarray|matplotlib|tqdm)(\..*)?"),
    (r"py:.*", r"(typing|collections|collections\.abc|types|pathlib|os)\..*"),
    # Pyro-style type words in ``:param type name:`` and ``:type:`` fields.
    (r"py:class", r"callable|sequence|optional|iterable|mapping"),
]


def _lookup(path):
    """The object at a dotted path such as ``pyro_lfvi.checkpoint.load_checkpoint``, or None."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for part in parts[split:]:
            obj = getattr(obj, part, None)
        return obj
    return None


def _resolve_reexport(app, env, node, contnode):
    """Resolve a reference to a public object by another path to the same object.

    The API reference documents each public object once, under the name users
    import (``pyro_lfvi.load_checkpoint``); a module's docstring may still name
    it by its home (``pyro_lfvi.checkpoint.load_checkpoint``, or just
    ``load_checkpoint`` inside that module).
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    modname = node.get("py:module")
    for path in (target, f"{modname}.{target}"):
        if not path.startswith("pyro_lfvi."):  # import nothing else
            continue
        obj = _lookup(path)
        name = getattr(obj, "__name__", None)
        if obj is not None and name and getattr(pyro_lfvi, name, None) is obj:
            public = f"pyro_lfvi.{name}"
            domain = env.get_domain("py")
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
            )
    return None


def setup(app):
    app.connect("missing-reference", _resolve_reexport)
