"""The package's top level: its version and its public names."""

import subprocess
import sys
from importlib.metadata import version

import pyro_lfvi


def test_version_comes_from_the_installed_metadata():
    assert pyro_lfvi.__version__ == version("pyro-lfvi")


def test_public_names_are_sorted_and_importable():
    # isort's order: constants (all capitals), then classes, then functions.
    def order(name):
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    names = pyro_lfvi.__all__
    assert names == sorted(names, key=order)
    for name in names:
        assert getattr(pyro_lfvi, name) is not None


def test_import_leaves_the_heavy_optional_libraries_unloaded():
    # ArviZ, xarray, pandas and matplotlib load only when to_inference_data or
    # plot_history runs: a fresh interpreter shows what the import pulls in.
    code = (
        "import sys, pyro_lfvi; "
        "print(sorted(m for m in ('arviz', 'xarray', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
