"""Reading and writing checkpoints in the Hugging Face layout the server loads:
`config.json` + `model.safetensors` (bf16, MODEL.md tensor names) + `tokenizer.json`."""
import json
import os
import shutil
import struct

import torch

import modeling

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
           "I8": torch.int8, "I32": torch.int32, "I64": torch.int64}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def read_safetensors(path):
    with open(path, "rb") as handle:
        data = handle.read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_length])
    base = 8 + header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        dtype = _DTYPES[entry["dtype"]]
        tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(entry["shape"])
    return tensors


def write_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for chunk in chunks:
            handle.write(chunk)


def load_model(directory, dtype=torch.float64):
    """A model with the checkpoint's weights, computing in `dtype` (bf16 values widened exactly)."""
    with open(os.path.join(directory, "config.json")) as handle:
        config = modeling.Config.from_json(json.load(handle))
    state = read_safetensors(os.path.join(directory, "model.safetensors"))
    state = {name: tensor for name, tensor in state.items()
             if not name.endswith(".attn.mask") and not name.endswith(".attn.cum_weight")}
    model = modeling.ModuleFormer(config, modeling.expert_counts_from_state(state, config.n_layer))
    model.load_state_dict({name: tensor.to(dtype) for name, tensor in state.items()}, strict=True)
    return model.to(dtype).eval()


def export(model, tokenizer_json, directory):
    """Writes config.json, model.safetensors (bf16) and a copy of the tokenizer_json file."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as handle:
        json.dump(model.config.to_json(), handle, indent=2, sort_keys=True)
        handle.write("\n")
    state = {name: tensor.to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    write_safetensors(os.path.join(directory, "model.safetensors"), state)
    shutil.copyfile(tokenizer_json, os.path.join(directory, "tokenizer.json"))
