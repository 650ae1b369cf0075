#!/usr/bin/env python3
"""Writes the small PyTorch pickle fixtures for models/src/weights/pickle.rs.

Run with the pinned reference stack (torch==2.11.0, numpy, safetensors; see requirements.txt):

    .venv/bin/python reference/gen_pickle_fixtures.py

Every fixture `NAME.pt|.pth|.ckpt` that holds tensors gets a `NAME.expected.safetensors` next to it:
the tensors the Rust reader must return, by the names it must return them under (contiguous, same
dtype), so the Rust tests compare bit for bit. The files are tiny (a few KB) and committed. Values
are seeded, but torch writes a random `.data/serialization_id` into every archive, so regenerating
changes the bytes (not the tensors); only regenerate when adding fixtures.

The hostile fixtures (`forbidden.pt`, `torchscript.pt`, `duplicate.pt`, `outside.pt`, ...) are
meant to be refused. `forbidden.pt` holds an object whose `__reduce__` is `os.system("touch
/tmp/diffusiond-pickle-pwned")`: loading it with `torch.load(weights_only=False)` would run that
command, which is exactly what the Rust reader must never do.
"""

import os
import sys
import types
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pickle")
MARKER = "/tmp/diffusiond-pickle-pwned"


def path(name):
    return os.path.join(OUT, name)


def expect(name, tensors):
    """The tensors the reader must produce for fixture `name` (without extension)."""
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path(name + ".expected.safetensors"))


def rezip(src, dst, edit):
    """Copies the zip `src` to `dst`, passing each (name, bytes) through `edit`, which returns a
    list of (name, bytes, compression) to write (empty to drop the entry)."""
    with zipfile.ZipFile(path(src)) as zin, zipfile.ZipFile(path(dst), "w") as zout:
        for info in zin.infolist():
            for name, data, compression in edit(info.filename, zin.read(info)):
                zi = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                zi.compress_type = compression
                zout.writestr(zi, data)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)

    # 1. One tensor per supported dtype, plus a 0-dim and an empty tensor.
    dtypes = {
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "f32": torch.randn(2, 3),
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(3, 2).bfloat16(),
        "i64": torch.arange(-2, 3, dtype=torch.int64),
        "i32": torch.tensor([1, -7, 2**30], dtype=torch.int32),
        "i16": torch.tensor([-300, 300], dtype=torch.int16),
        "i8": torch.tensor([-5, 5], dtype=torch.int8),
        "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }
    torch.save(dtypes, path("dtypes.pt"))
    expect("dtypes", dtypes)

    # 2. Views sharing one storage: element offsets, and a reshaped view.
    base = torch.arange(20, dtype=torch.float32)
    shared = {"whole": base, "middle": base[2:8], "tail": base[10:].view(2, 5)}
    torch.save(shared, path("shared_storage.pt"))
    expect("shared_storage", shared)

    # 3. Non-contiguous tensors: a transpose and a stepped slice.
    m = torch.randn(4, 6)
    strided = {"transposed": torch.randn(3, 4).t(), "stepped": m[:, ::2], "column": m[:, 1]}
    assert not strided["transposed"].is_contiguous() and not strided["stepped"].is_contiguous()
    torch.save(strided, path("strided.pt"))
    expect("strided", strided)

    # 4. A Lightning-style checkpoint: nested state_dict, counters, a ModelCheckpoint callback (the
    # class is faked so that pickle writes the same global name), numpy scalars, torch.Size,
    # torch.device and dtype symbols outside the state dict, and optimizer tensors to ignore.
    pl = types.ModuleType("pytorch_lightning")
    plc = types.ModuleType("pytorch_lightning.callbacks")
    plmc = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    plmc.ModelCheckpoint = ModelCheckpoint
    sys.modules.update(
        {"pytorch_lightning": pl, "pytorch_lightning.callbacks": plc, plmc.__name__: plmc}
    )
    sd = {
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3).half(),
        "model.diffusion_model.out.2.bias": torch.randn(4).half(),
        "first_stage_model.decoder.conv_out.weight": torch.randn(3, 4, 1, 1),
    }
    lightning = {
        "state_dict": sd,
        "global_step": 3,
        "epoch": 1,
        "pytorch-lightning_version": "1.4.2",
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "monitor": None}},
        "extra": {
            "size": torch.Size([2, 3]),
            "device": torch.device("cpu"),
            "dtype": torch.float16,
            "array": np.arange(3, dtype=np.int32),
        },
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4)}}}],
    }
    torch.save(lightning, path("lightning.ckpt"))
    expect("lightning", sd)

    # 5. A1111 textual inversion, plain dict (newer A1111) ...
    vec = torch.randn(2, 8)
    ti = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.nn.Parameter(vec.clone())},
        "name": "tiny-emb",
        "step": 10,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned",
    }
    torch.save(ti, path("embedding.pt"))
    expect("embedding", {"string_to_param.*": vec})

    # 6. ... and the original-TI layout with a ParameterDict (NEWOBJ + BUILD, _parameters, sets).
    ti_old = {
        "string_to_token": {"*": torch.tensor(265)},
        "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())}),
    }
    torch.save(ti_old, path("embedding_paramdict.pt"))
    expect("embedding_paramdict", {"string_to_token.*": torch.tensor(265), "string_to_param.*": vec})

    # 7. Pre-1.6 legacy stream, with shared storages and a half tensor.
    base = torch.randn(10)
    legacy = {"a": base[:4], "b": base[4:].view(2, 3), "h": torch.randn(3).half(), "n": {"x": torch.ones(2)}}
    torch.save(legacy, path("legacy.pth"), _use_new_zipfile_serialization=False)
    expect("legacy", {"a": legacy["a"], "b": legacy["b"], "h": legacy["h"], "n.x": legacy["n"]["x"]})

    # 8. Protocols 4 and 5 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL), zip and legacy.
    p4 = {"w": torch.randn(3, 3), "b": torch.randn(3).bfloat16(), "t": torch.randn(2, 3).t()}
    torch.save(p4, path("protocol4.pt"), pickle_protocol=4)
    expect("protocol4", p4)
    torch.save(p4, path("legacy_protocol5.pth"), pickle_protocol=5, _use_new_zipfile_serialization=False)
    expect("legacy_protocol5", p4)

    # 9. Tensor state: a Parameter with an attribute (_rebuild_parameter_with_state) and a plain
    # tensor with a Python attribute (_rebuild_from_type_v2 around _rebuild_tensor_v2).
    p = torch.nn.Parameter(torch.randn(2, 2))
    p.note = "hello"
    t = torch.randn(3)
    t.note = "world"
    state = {"param": p, "tensor": t}
    torch.save(state, path("tensor_state.pt"))
    expect("tensor_state", state)

    # 10. Dtypes torch writes with _rebuild_tensor_v3 over an UntypedStorage.
    f8 = torch.tensor([0.5, -1.0, 2.0, 448.0]).to(torch.float8_e4m3fn)
    v3 = {"f8": f8, "u16": torch.tensor([1, 65535], dtype=torch.uint16), "f32": torch.ones(2)}
    torch.save(v3, path("v3_dtypes.pt"))
    expect("v3_dtypes", {"f8_bits": f8.view(torch.uint8), "f32": v3["f32"]})

    # 11. Nested dicts of tensors are flattened with '.', other values ignored.
    nested = {"model": {"layer": {"weight": torch.randn(2, 2)}, "scale": 2.0}, "meta": "x"}
    torch.save(nested, path("nested.pt"))
    expect("nested", {"model.layer.weight": nested["model"]["layer"]["weight"]})

    # 12. Re-zipped with deflate (records must be decompressed on read).
    rezip("strided.pt", "deflated.pt", lambda n, d: [(n, d, zipfile.ZIP_DEFLATED)])
    expect("deflated", strided)

    # 13. A big-endian archive, as torch >= 2.1 writes on big-endian machines: `byteorder` says
    # big and every record holds byte-swapped elements.
    be_src = {
        "f32": torch.randn(2, 3),
        "f16": torch.randn(3).half(),
        "i64": torch.arange(3),
        "u8": torch.arange(4, dtype=torch.uint8),
    }
    torch.save(be_src, path("bigendian.pt"))
    with zipfile.ZipFile(path("bigendian.pt")) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        arch = pkl[: -len("data.pkl")]
    order = list(be_src)  # torch assigns storage keys 0, 1, ... in pickling order

    def swap(name, data):
        if name == arch + "byteorder":
            return [(name, b"big", zipfile.ZIP_STORED)]
        if name.startswith(arch + "data/"):
            key = int(name[len(arch + "data/"):])
            size = be_src[order[key]].element_size()
            arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)[:, ::-1]
            return [(name, arr.tobytes(), zipfile.ZIP_STORED)]
        return [(name, data, zipfile.ZIP_STORED)]

    rezip("bigendian.pt", "bigendian.tmp", swap)
    os.replace(path("bigendian.tmp"), path("bigendian.pt"))
    # torch.load byte-swaps archives whose byteorder differs from the machine's: a round trip
    # checks that the records were swapped with the right element sizes.
    back = torch.load(path("bigendian.pt"), weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in be_src.items())
    expect("bigendian", be_src)

    # 14. Forbidden global: os.system in a __reduce__. Never load this with weights_only=False.
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + MARKER,))

    torch.save({"w": torch.ones(2), "evil": Evil()}, path("forbidden.pt"))

    # 15. A TorchScript archive (code/, constants.pkl): must be refused, not run.
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w

    torch.jit.save(torch.jit.script(Tiny()), path("torchscript.pt"))

    # 16. Malformed containers: a duplicated record, and an entry outside the archive folder.
    rezip("nested.pt", "duplicate.pt", lambda n, d: [(n, d, 0)] * (2 if "/data/" in n else 1))
    rezip("nested.pt", "outside.pt", lambda n, d: [(n, d, 0)] + ([("elsewhere/data/0", d, 0)] if "/data/" in n else []))

    # A file that is a pickle but neither a zip nor a legacy stream (plain pickle.dump of tensors
    # is not something torch.load reads either); the reader must reject it cleanly.
    with open(path("plain_pickle.pkl"), "wb") as f:
        f.write(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.")

    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(path(name)):7d}  {name}")
    if os.path.exists(MARKER):
        print(f"warning: {MARKER} exists (left over from something else?)")


if __name__ == "__main__":
    main()
