"""The public API in `openrft/__init__.py`: `__all__` is exactly the export table, every name is
the object of its home module, and `import openrft` stays light (no torch, no transformers)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import openrft


def test_all_is_the_sorted_export_table():
    assert openrft.__all__ == sorted(openrft._EXPORTS)
    assert dir(openrft) == openrft.__all__


@pytest.mark.parametrize("name", openrft.__all__)
def test_every_public_name_is_the_object_in_its_home_module(name):
    module_name, _, attribute = openrft._EXPORTS[name].partition(":")
    home = importlib.import_module(module_name)
    assert getattr(openrft, name) is getattr(home, attribute or name)
    assert getattr(openrft, name).__module__.startswith("openrft.")


def test_no_public_name_shadows_a_subpackage_or_module():
    """`openrft.train` the subpackage and a function `openrft.train` cannot both exist: importing
    the subpackage rebinds the attribute, so the function would depend on import order."""
    root = Path(openrft.__file__).parent
    for name in openrft.__all__:
        assert not (root / name).exists() and not (root / f"{name}.py").exists(), name


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="'no_such_name'"):
        _ = openrft.no_such_name
    with pytest.raises(ImportError, match="no_such_name"):
        exec("from openrft import no_such_name", {})


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    assert openrft.__version__ == version("openrft")


def test_import_openrft_imports_neither_torch_nor_transformers():
    code = (
        "import sys, openrft; openrft.load_config; openrft.RFTError; openrft.Example; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
