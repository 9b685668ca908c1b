"""pyproject.toml installs the library and its configs (as fedlabel._configs) and nothing else: the
Flower apps stay folders that Flower loads from the app directory."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
SETUPTOOLS = TOOL["setuptools"]


def test_every_library_package_and_only_those_is_installed():
    inits = (ROOT / "fedlabel").rglob("__init__.py")
    library = {".".join(p.parent.relative_to(ROOT).parts) for p in inits}
    assert sorted(SETUPTOOLS["packages"]) == sorted(library | {"fedlabel._configs"})
    assert SETUPTOOLS["package-dir"] == {"fedlabel._configs": "configs"}
    assert set(SETUPTOOLS["package-data"]["fedlabel._configs"]) == {"*.yaml", "experiment/*.yaml"}


def test_flower_components_are_files_of_the_app_directory():
    for ref in TOOL["flwr"]["app"]["components"].values():
        module = ref.split(":")[0]
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
        assert module.split(".")[0] not in SETUPTOOLS["packages"]
