"""The engine's layers include only downward (engine/CMakeLists.txt names them).

Every `#include "..."` of the project's own headers is checked against the table
below, so a wrong-way include fails here even when it needs no symbol (a struct, an
inline function); the layers' link checks catch the calls.
"""
import pathlib
import re
import unittest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE_SUFFIXES = {".cc", ".h", ".cu", ".cuh", ".inc"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)

# The backend interface sits at engine/'s top beside the serving core, but below it:
# the backends implement it and must not reach the rest of the core.
BACKEND_INTERFACE = {"engine/backend.h", "engine/backend.cc", "engine/tensor.h", "engine/routing.h",
                     "engine/routing.cc"}

# Each layer and the layers it may include (itself included).
ALLOWED = {
    "base": {"base"},
    "text": {"base", "text"},
    "sampling": {"base", "sampling"},
    "checkpoint": {"base", "checkpoint"},
    "backend_interface": {"base", "checkpoint", "backend_interface"},
    "cpu": {"base", "checkpoint", "backend_interface", "cpu"},
    "cuda": {"base", "checkpoint", "backend_interface", "cuda", "kernels"},
    "kernels": {"kernels"},
    "core": {"base", "text", "sampling", "checkpoint", "backend_interface", "cpu", "core"},
    # Users of the engine reach a backend only through engine/model_loader.h.
    "users": {"base", "text", "sampling", "checkpoint", "backend_interface", "core", "users", "proto"},
    # Benchmarks of the CUDA backend's parts (bench/cuda/) measure kernels and the backend's
    # cuBLAS plans directly, as its tests do; nothing of the serving core.
    "device_bench": {"base", "checkpoint", "backend_interface", "cuda", "kernels", "device_bench"},
}
ENGINE_SUBFOLDERS = {"base", "text", "sampling", "checkpoint", "cpu", "cuda"}


def layer_of(path: str):
    """The layer a repository path belongs to, or None for files outside the rules."""
    parts = path.split("/")
    if parts[0] == "engine":
        if len(parts) == 2:
            return "backend_interface" if path in BACKEND_INTERFACE else "core"
        if parts[1] in ENGINE_SUBFOLDERS:
            return parts[1]
        return "unknown engine folder"
    if parts[0] == "kernels":
        return "kernels"
    if parts[0] == "bench" and len(parts) > 2 and parts[1] == "cuda":
        return "device_bench"
    if parts[0] in {"server", "tools", "bench"}:
        return "users"
    if parts[0] == "proto" or path.endswith(".pb.h"):
        return "proto"
    return None


def project_sources():
    for folder in ("engine", "kernels", "server", "tools", "bench"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in SOURCE_SUFFIXES and path.is_file():
                yield path.relative_to(ROOT).as_posix()


def violations():
    found = []
    for source in project_sources():
        source_layer = layer_of(source)
        text = (ROOT / source).read_text(encoding="utf-8")
        for included in INCLUDE.findall(text):
            target_layer = layer_of(included)
            if target_layer is None:
                continue  # tests/, generated or third-party headers
            if target_layer not in ALLOWED.get(source_layer, set()):
                found.append(f"{source} ({source_layer}) includes {included} ({target_layer})")
    return found


class LayeringTest(unittest.TestCase):
    def test_every_include_points_down(self):
        self.assertEqual(violations(), [])

    def test_engine_has_only_known_subfolders(self):
        folders = {p.name for p in (ROOT / "engine").iterdir() if p.is_dir()}
        self.assertEqual(folders, ENGINE_SUBFOLDERS)

    def test_every_subfolder_is_its_own_library(self):
        for folder in sorted(ENGINE_SUBFOLDERS):
            cmake = (ROOT / "engine" / folder / "CMakeLists.txt").read_text(encoding="utf-8")
            self.assertRegex(cmake, rf"add_library\(mf_{folder} ", folder)

    def test_the_rules_catch_a_wrong_way_include(self):
        # The classification itself, on paths the tree does not have (yet).
        self.assertNotIn("core", ALLOWED[layer_of("engine/text/new.cc")])
        self.assertNotIn("cuda", ALLOWED[layer_of("engine/cpu/new.cc")])
        self.assertNotIn("cpu", ALLOWED[layer_of("engine/cuda/new.cc")])
        self.assertNotIn("core", ALLOWED[layer_of("engine/cpu/new.cc")])
        self.assertEqual(layer_of("engine/model.h"), "core")
        self.assertEqual(layer_of("engine/backend.h"), "backend_interface")
        self.assertNotIn("cpu", ALLOWED[layer_of("server/service.cc")])
        self.assertNotIn("cuda", ALLOWED[layer_of("bench/step_bench.cc")])
        self.assertEqual(layer_of("bench/cuda/new.cu"), "device_bench")
        self.assertNotIn("core", ALLOWED[layer_of("bench/cuda/new.cu")])


if __name__ == "__main__":
    unittest.main()
