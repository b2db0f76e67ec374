"""The package's top level: its version and its public names."""

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
