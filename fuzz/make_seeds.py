"""Make the seed corpora in fuzz/seeds/<target>/ from real files: torch.save (zip and
legacy), the safetensors package, numpy.savez, a Hugging Face style shard index, and
the gguf package's own block quantization (litecomp's for the K types, which
gguf only dequantizes).  Small on purpose (a few KB each): the fuzzer
mutates them, and the test suite replays them.  Seeds named error-* are meant to raise a
litecomp error (a nested checkpoint without key=, a shard outside its folder).

    python fuzz/make_seeds.py          # needs torch, safetensors, gguf (the test extra)
"""

import io
import json
import os
import shutil
import sys
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import targets  # noqa: E402


def _torch_state_dicts(torch):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 6, generator=g)
    yield "f32", {"w": w, "b": torch.zeros(4)}
    yield "dtypes", {"h": w.half(), "bf": w.bfloat16(), "d": w.double()[:2],
                     "i8": torch.arange(-3, 3, dtype=torch.int8),
                     "i64": torch.arange(5), "m": torch.tensor([True, False]),
                     "u16": torch.arange(3).to(torch.uint16),
                     "f8": w.to(torch.float8_e4m3fn)[0]}
    yield "views", {"w": w, "t": w.t(), "row": w[1], "col": w[:, 2],
                    "e": torch.arange(3.0).expand(2, 3), "s": torch.tensor(2.5),
                    "empty": torch.zeros(0, 3)}
    yield "error-nested", {"model": {"w": w[:2]}, "epoch": 3, "opt": {"lr": 0.1, "betas": (0.9, 0.99),
                                                                "names": ["a", "b"]}}
    yield "param", {"p": torch.nn.Parameter(w[:1].clone())}
    lin = torch.nn.Linear(3, 2)
    yield "module", lin.state_dict()


def torch_seeds(out):
    import torch
    for name, sd in _torch_state_dicts(torch):
        buf = io.BytesIO()
        torch.save(sd, buf)
        _put(out["torch"], f"{name}.pth", buf.getvalue())
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        _put(out["torch-pickle"], f"{name}.pkl", pkl)
        buf = io.BytesIO()
        torch.save(sd, buf, _use_new_zipfile_serialization=False)
        _put(out["legacy"], f"{name}.bin", buf.getvalue())
    # a big-endian record and a deflated archive (torch never writes one, zip tools do)
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(b := io.BytesIO(), "w", zipfile.ZIP_DEFLATED) as dst:
        for n in src.namelist():
            dst.writestr(n, src.read(n))
    _put(out["torch"], "deflated.pth", b.getvalue())


def safetensors_seeds(out):
    from safetensors.numpy import save
    import ml_dtypes
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 6)).astype(np.float32)
    _put(out["safetensors"], "f32.safetensors", save({"w": w, "b": np.zeros(4, np.float32)}))
    _put(out["safetensors"], "dtypes.safetensors", save({
        "h": w.astype(np.float16), "bf": w.astype(ml_dtypes.bfloat16), "i8": np.arange(3, dtype=np.int8),
        "u64": np.arange(2, dtype=np.uint64), "m": np.array([True, False]),
        "s": np.array(1.5, np.float64), "e": np.zeros((0, 2), np.int32)}))
    _put(out["safetensors"], "meta.safetensors",
         save({"w": w[:1]}, metadata={"format": "pt", "note": "seed"}))
    _put(out["safetensors"], "empty.safetensors", save({}))


def npz_seeds(out):
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((3, 4)).astype(np.float32), "i": np.arange(5),
              "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "be": np.arange(3, dtype=">i4"), "s": np.array(7, np.int16)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _put(out["npz"], "stored.npz", buf.getvalue())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _put(out["npz"], "deflated.npz", buf.getvalue())
    for name, a in arrays.items():        # single .npy members (the wrapped form)
        b = io.BytesIO()
        np.save(b, a)
        _put(out["npz"], f"member-{name}.npy", b"\x00" + b.getvalue())
        _put(out["npz"], f"member-{name}-deflated.npy", b"\x01" + b.getvalue())


def shard_seeds(out):
    index = {"metadata": {"total_size": 32},
             "weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors",
                            "c": "model-00002-of-00002.safetensors"}}
    _put(out["shards"], "index.json", json.dumps(index, indent=2).encode())
    index["weight_map"] = {"a": "model-00001-of-00002.safetensors"}
    _put(out["shards"], "one.json", json.dumps(index).encode())
    _put(out["shards"], "error-outside.json", json.dumps(
        {"weight_map": {"secret": "../outside/secret.safetensors"}}).encode())


def gguf_seeds(out):
    import gguf
    rng = np.random.default_rng(0)
    for i, name in enumerate(targets._GGUF_TYPES):
        block = 256 if name.endswith("_K") else 32
        x = rng.standard_normal((2, block)).astype(np.float32)
        try:
            q = gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, name))
        except NotImplementedError:       # gguf.quants dequantizes K types only
            from litecomp.quant import gguf as lgguf
            q = lgguf.quantize(x, name)
        _put(out["gguf"], f"{name}.bin", bytes([i, 1]) + q.tobytes())


def recipe_seeds(out):
    recipes = {
        "prune": [{"method": "magnitude", "targets": ["*.weight"], "ignore": ["emb.*"],
                   "sparsity": 0.5}],
        "nm": {"method": "magnitude", "n": 2, "m": 4, "targets": ["re:fc\\..*"]},
        "rows": {"method": "magnitude", "granularity": "row", "sparsity": 0.25},
        "random": {"method": "random", "sparsity": 0.3, "seed": 1},
        "rtn": [{"method": "rtn", "bits": 4, "group_size": 32, "ignore": ["emb.*"]},
                {"method": "nf4", "block_size": 64, "targets": ["emb.*"]}],
        "kmeans": {"method": "kmeans", "bits": 3, "keep_zeros": True},
        "stages": {"stages": [{"method": "rtn", "bits": 8, "axis": 0, "scheme": "affine"}]},
    }
    for name, r in recipes.items():
        _put(out["recipe"], f"{name}.json", b"\x00" + json.dumps(r).encode())
    _put(out["recipe"], "yaml.yaml", b"\x01" + (
        b"- method: magnitude\n  sparsity: 0.5\n  targets: ['*.weight']\n"
        b"- method: fp4\n  block_size: 32\n  double_quant: true\n"))


def _put(folder, name, data):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    out = {}
    for name in targets.names():
        folder = os.path.join(targets.SEEDS, name)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        out[name] = folder
    torch_seeds(out)
    safetensors_seeds(out)
    npz_seeds(out)
    shard_seeds(out)
    gguf_seeds(out)
    recipe_seeds(out)
    for name, folder in out.items():
        files = os.listdir(folder)
        print(f"{name}: {len(files)} seeds, {sum(os.path.getsize(os.path.join(folder, f)) for f in files)} bytes")


if __name__ == "__main__":
    main()
