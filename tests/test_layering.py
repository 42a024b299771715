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


def test_result_files_follow_the_umask(tmp_path):
    # Score files, run records, sidecars and the ECL registry all go through atomic_file.
    import os

    from entropyprune.files import atomic_file, write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": float("nan")})
        with atomic_file(tmp_path / "b.jsonl", "wb", fsync=True) as f:
            f.write(b"{}\n")
        os.umask(0o077)
        write_json_atomic(tmp_path / "c.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == '{\n  "x": null\n}\n'
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "b.jsonl").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "c.json").stat().st_mode & 0o777) == oct(0o600)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl", "c.json"]  # no temporary left


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    import pytest

    from entropyprune.files import atomic_file

    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
