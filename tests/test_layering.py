"""The layering rule: ``entropyprune`` (method and framework) never imports ``llava`` (the runtime)."""

import subprocess
import sys

# Runs in a fresh interpreter in which any import of llava fails, then imports every entropyprune module.
PROBE = r"""
import importlib, importlib.abc, pkgutil, sys

class NoLlava(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "llava" or name.startswith("llava."):
            raise ImportError(f"entropyprune imported {name}")
        return None

sys.meta_path.insert(0, NoLlava())
import entropyprune
names = [m.name for m in pkgutil.walk_packages(entropyprune.__path__, "entropyprune.")]
for name in names:
    importlib.import_module(name)
assert not [m for m in sys.modules if m == "llava" or m.startswith("llava.")]
print(len(names))
"""


def test_entropyprune_imports_without_llava():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 9  # config, ecl, figures, flops, hook, methods (+2), report, score


def test_the_probe_catches_an_import_of_llava():
    # The same probe with one line that imports llava must fail: the finder really blocks it.
    proc = subprocess.run([sys.executable, "-c", PROBE + "\nimport llava.constants\n"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "entropyprune imported llava" in proc.stderr
