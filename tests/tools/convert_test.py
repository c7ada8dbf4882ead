"""`moduleformer convert`: checkpoints written by PyTorch itself convert to safetensors
whose tensors equal the originals and whose model passes `moduleformer verify`; hostile
or broken pickles and archives are refused, naming what was found, without side effects."""
import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
import unittest
import zipfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
FIXTURES = os.environ.get("MF_FIXTURES_DIR", os.path.join(ROOT, "tests", "fixtures"))
DTYPES = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16, "I8": torch.int8, "I64": torch.int64,
          "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool, "F64": torch.float64, "I16": torch.int16}


def read_safetensors(path):
    """{name: tensor} of a safetensors file, read by hand (no safetensors package)."""
    with open(path, "rb") as f:
        raw = f.read()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + length])
    tensors = collections.OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        data = bytearray(raw[8 + length + begin:8 + length + end])
        dtype = DTYPES[info["dtype"]]
        tensors[name] = (torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)).reshape(
            info["shape"])
    return tensors


def read_converted(directory):
    index = os.path.join(directory, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(directory, "model.safetensors"))
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = collections.OrderedDict()
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(directory, shard)))
    return tensors


def convert(source, out, *flags):
    return subprocess.run([CLI, "convert", "--model", source, "--out", out, *flags], capture_output=True, text=True,
                          timeout=120)


class ConvertTest(unittest.TestCase):
    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="mf-convert-")

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def torch_checkpoint(self, fixture, shards):
        """The fixture's state dict saved by torch.save: one file, or `shards` with an index."""
        tensors = read_safetensors(os.path.join(FIXTURES, "reference", fixture, "model.safetensors"))
        source = os.path.join(self.work, f"{fixture}-torch")
        os.makedirs(source)
        shutil.copy(os.path.join(FIXTURES, "reference", fixture, "config.json"), source)
        names = list(tensors)
        if shards == 1:
            torch.save(collections.OrderedDict((n, tensors[n]) for n in names), os.path.join(source, "pytorch_model.bin"))
        else:
            weight_map = {}
            for shard in range(shards):
                file = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
                part = collections.OrderedDict((n, tensors[n]) for n in names[shard::shards])
                torch.save(part, os.path.join(source, file))
                weight_map.update({n: file for n in part})
            with open(os.path.join(source, "pytorch_model.bin.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": weight_map}, f)
        return source, tensors

    def test_torch_checkpoints_convert_exactly_and_verify(self):
        for fixture, shards, flags in (("molm-tiny", 1, ()), ("projected-kv", 3, ()),
                                       ("pruned", 2, ("--shard-size-mb", "0.2"))):
            with self.subTest(fixture=fixture, shards=shards):
                source, originals = self.torch_checkpoint(fixture, shards)
                out = os.path.join(self.work, f"{fixture}-converted")
                result = convert(source, out, *flags)
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertIn("convert: reading", result.stderr)  # progress on stderr
                converted = read_converted(out)
                self.assertEqual(list(sorted(converted)), list(sorted(originals)))
                for name, tensor in originals.items():
                    self.assertEqual(converted[name].dtype, tensor.dtype, name)
                    self.assertEqual(converted[name].shape, tensor.shape, name)
                    self.assertTrue(torch.equal(converted[name], tensor), name)
                dtypes = {t.dtype for t in converted.values()}
                self.assertTrue({torch.bfloat16, torch.int8, torch.float32} <= dtypes, dtypes)
                if flags:
                    self.assertTrue(os.path.exists(os.path.join(out, "model.safetensors.index.json")))
                self.assertEqual([f for f in os.listdir(out) if f.endswith(".partial")], [])
                cases = os.path.join(FIXTURES, "reference", fixture, "cases.json")
                verify = subprocess.run([CLI, "verify", "--model", out, "--cases", cases], capture_output=True,
                                        text=True, timeout=120)
                self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
                self.assertIn("0 failed", verify.stdout)

    def test_views_and_shared_storage_are_copied_as_values(self):
        source = os.path.join(self.work, "views")
        os.makedirs(source)
        base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
        state = collections.OrderedDict([("full", base), ("transposed", base.t()), ("columns", base[:, 1:4]),
                                         ("tied", base), ("scalar", torch.tensor(3.5)), ("empty", torch.zeros(0, 3))])
        torch.save(state, os.path.join(source, "pytorch_model.bin"))
        result = convert(source, os.path.join(self.work, "out"))
        self.assertEqual(result.returncode, 0, result.stderr)
        converted = read_converted(os.path.join(self.work, "out"))
        for name, tensor in state.items():
            self.assertTrue(torch.equal(converted[name], tensor.contiguous()), name)

    # Hostile and broken inputs: each refused with a message naming the problem, and
    # whatever the pickle would have run never runs.
    def archive(self, pickle_bytes, storages=(), compress=False, extra_names=()):
        source = os.path.join(self.work, "hostile")
        shutil.rmtree(source, ignore_errors=True)
        os.makedirs(source)
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(os.path.join(source, "pytorch_model.bin"), "w", method) as archive:
            archive.writestr("archive/data.pkl", pickle_bytes)
            for key, data in storages:
                archive.writestr(f"archive/data/{key}", data)
            for name in extra_names:
                archive.writestr(name, b"x")
            archive.writestr("archive/version", b"3\n")
        return source

    def assertRefused(self, source, *expected):
        out = os.path.join(self.work, "refused-out")
        result = convert(source, out)
        self.assertEqual(result.returncode, 1, result.stderr)
        for text in expected:
            self.assertIn(text, result.stderr)
        self.assertFalse(os.path.exists(out))  # nothing written

    def test_a_pickle_calling_os_system_is_refused_and_never_runs(self):
        marker = os.path.join(self.work, "pwned")

        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        for payload in (pickle.dumps(Exploit(), protocol=2), pickle.dumps({"w": Exploit()}, protocol=4)):
            self.assertRefused(self.archive(payload), "global 'posix.system' is not allowed")
        self.assertFalse(os.path.exists(marker))

    def test_other_globals_and_calls_are_refused(self):
        cases = [
            (b"\x80\x02cbuiltins\neval\nq\x00X\x05\x00\x00\x001+1q\x01\x85R.", "global 'builtins.eval'"),
            (b"\x80\x02cbuiltins\ngetattr\n.", "global 'builtins.getattr'"),
            (b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.", "global 'builtins.exec'"),
            # An allowed global called the wrong way, and a storage type called at all.
            (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.", "bad _rebuild_tensor_v2 arguments"),
            (b"\x80\x02ctorch\nFloatStorage\n)R.", "REDUCE of 'torch.FloatStorage' is not allowed"),
            (b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.", "OrderedDict called with arguments"),
            (b"\x80\x02\x81.", "opcode 0x81 is not allowed"),
            # A dict that holds itself (once leaked the values of reference-counted readers).
            (b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00ah\x01s.",
             "entry 'a' is not a tensor"),
        ]
        for payload, expected in cases:
            with self.subTest(expected=expected):
                self.assertRefused(self.archive(payload), expected)

    def good_pickle(self, numel=6):
        """A state dict with one float tensor of `numel` elements in storage '0'."""
        with io.BytesIO() as buffer:
            torch.save(collections.OrderedDict(w=torch.arange(numel, dtype=torch.float32)), buffer)
            with zipfile.ZipFile(buffer) as saved:
                name = next(n for n in saved.namelist() if n.endswith("data.pkl"))
                return saved.read(name)

    def test_broken_structures_are_refused(self):
        pickled = self.good_pickle()
        storage = struct.pack("<6f", *range(6))
        self.assertRefused(self.archive(pickled[:-5], [("0", storage)]), "truncated pickle")
        self.assertRefused(self.archive(pickled, [("0", storage[:12])]), "reaches element 5 of a storage of 3")
        self.assertRefused(self.archive(pickled, []), "names storage '0', which is missing")
        self.assertRefused(self.archive(pickled, [("0", storage)], compress=True), "is compressed (method 8)")
        self.assertRefused(self.archive(pickled, [("0", storage)], extra_names=["../escape"]),
                           "entry name '../escape' leaves the archive")
        self.assertRefused(self.archive(pickled, [("0", storage)], extra_names=["/etc/passwd"]),
                           "entry name '/etc/passwd' leaves the archive")
        self.assertFalse(os.path.exists(os.path.join(self.work, "escape")))
        # A legacy (pre-zip) pickle and a file that is not an archive.
        legacy = os.path.join(self.work, "legacy")
        os.makedirs(legacy)
        torch.save({"w": torch.zeros(2)}, os.path.join(legacy, "pytorch_model.bin"),
                   _use_new_zipfile_serialization=False)
        self.assertRefused(legacy, "legacy (pre-1.6) PyTorch pickle")
        junk = os.path.join(self.work, "junk")
        os.makedirs(junk)
        with open(os.path.join(junk, "pytorch_model.bin"), "wb") as f:
            f.write(b"PK" + b"\x00" * 64)
        self.assertRefused(junk, "not a valid zip archive")


if __name__ == "__main__":
    unittest.main()
