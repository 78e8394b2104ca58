"""The deployed safetensors file, its validation, and SRVGGNetCompact interoperability."""
import json
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from helpers import randomize_
from repsr_ext import PlainSR, RepSRNet
from repsr_ext.formats import FORMAT_NAME, DeployedFileError

from safetensors import safe_open


def _plain(act="prelu", scale=2, seed=0, block="repsr"):
    net = randomize_(RepSRNet(scale=scale, channels=6, num_blocks=2, act=act, block=block), seed=seed)
    return net.eval().reparameterize()


def _x(seed=0, shape=(2, 3, 7, 5)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _metadata(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.mark.parametrize("act", ["prelu", "relu", "lrelu", "identity"])
def test_save_load_round_trip(tmp_path, act):
    plain = _plain(act=act, scale=3, seed=1, block="dbb")
    path = tmp_path / "model.safetensors"
    plain.save(path)
    loaded = PlainSR.load(path)
    x = _x(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain(x))
    assert loaded.channels == plain.channels and loaded.scale == 3 and loaded.act_type == act
    meta = _metadata(path)
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == "1"
    assert json.loads(meta["channels"]) == [3, 6, 6, 6, 27]
    assert meta["block"] == "dbb" and meta["residual"] == "nearest" and meta["package_version"]


def test_save_does_not_clobber_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    _plain().save(path)
    original = path.read_bytes()
    import safetensors.torch

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        _plain(seed=3).save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --- bad files ---------------------------------------------------------------------------------------
def _rewrite(src, dst, edit_tensors=None, edit_meta=None):
    tensors = load_file(str(src))
    meta = _metadata(src)
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.safetensors"
    _plain().save(path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        PlainSR.load(tmp_path / "nope.safetensors")


def test_directory_as_model_path(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        PlainSR.load(tmp_path)


def test_missing_tensor(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_tensors=lambda t: t.pop("convs.1.bias"))
    with pytest.raises(DeployedFileError, match=r"missing tensor\(s\) convs.1.bias"):
        PlainSR.load(bad)


def test_wrong_shape(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_tensors=lambda t: t.__setitem__("convs.3.weight", torch.randn(12, 6, 3, 1)))
    with pytest.raises(DeployedFileError, match=r"'convs.3.weight' has shape \(12, 6, 3, 1\), expected \(12, 6, 3, 3\)"):
        PlainSR.load(bad)


def test_unexpected_tensor(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_tensors=lambda t: t.__setitem__("extra", torch.randn(2)))
    with pytest.raises(DeployedFileError, match="unexpected tensor.*extra"):
        PlainSR.load(bad)


def test_non_finite_weights(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"

    def poison(t):
        t["convs.0.weight"][0, 0, 1, 1] = float("nan")

    _rewrite(saved, bad, edit_tensors=poison)
    with pytest.raises(DeployedFileError, match="convs.0.weight.*NaN"):
        PlainSR.load(bad)


def test_unknown_version(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_meta=lambda m: m.__setitem__("format_version", "7"))
    with pytest.raises(DeployedFileError, match="unsupported format_version 7"):
        PlainSR.load(bad)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("scale", "zero", "malformed metadata"),
        ("channels", "[3, 6]", "unexpected tensor"),
        ("channels", "[3, 6, 6, 6, 6, 12]", "missing tensor"),
        ("channels", "[3, -6, 12]", "positive integers"),
        ("activation", "gelu", "unknown activation 'gelu'"),
        ("residual", "bicubic", "unknown residual mode 'bicubic'"),
        # The slope is a weight the checksum does not cover: NaN / Inf / absurd values are refused.
        ("lrelu_slope", "bogus", "lrelu_slope='bogus' is not a number"),
        ("lrelu_slope", "nan", "lrelu_slope 'nan' is not a finite number"),
        ("lrelu_slope", "-inf", "lrelu_slope '-inf' is not a finite number"),
        ("lrelu_slope", "1e30", "lrelu_slope '1e30' is not a finite number of magnitude <= 10000"),
    ],
)
def test_bad_metadata(saved, tmp_path, key, value, match):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_meta=lambda m: m.__setitem__(key, value))
    with pytest.raises(DeployedFileError, match=match):
        PlainSR.load(bad)


def test_missing_metadata_field(saved, tmp_path):
    bad = tmp_path / "bad.safetensors"
    _rewrite(saved, bad, edit_meta=lambda m: m.pop("scale"))
    with pytest.raises(DeployedFileError, match="metadata lacks 'scale'"):
        PlainSR.load(bad)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DeployedFileError, match="bad.safetensors"):
        PlainSR.load(bad)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a model", bytes(range(256)) * 4, b"\xff" * 8 + b"{" + b"x" * 100],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_garbage_files(tmp_path, content, suffix):
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    with pytest.raises(DeployedFileError, match=f"bad{suffix}"):
        PlainSR.load(bad)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_never_unpickles_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"params": _Evil()}))
    with pytest.raises(DeployedFileError, match="does not unpickle") as raised:
        PlainSR.load(bad)
    assert "weights_only=False" not in str(raised.value)  # no nudge towards unsafe loading
    assert not (tmp_path / "PWNED").exists()


def test_unrelated_state_dict(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.randn(3, 3)}, str(path))
    with pytest.raises(DeployedFileError, match="neither a repsr_ext deployed file"):
        PlainSR.load(path)


# --- SRVGGNetCompact -----------------------------------------------------------------------------------
def _srvgg_state(num_feat=8, num_conv=3, scale=4, prelu=True, seed=0, in_ch=3):
    g = torch.Generator().manual_seed(seed)
    state, k = {}, 0
    widths = [in_ch] + [num_feat] * (num_conv + 1) + [in_ch * scale * scale]
    for i in range(num_conv + 2):
        state[f"body.{k}.weight"] = torch.randn(widths[i + 1], widths[i], 3, 3, generator=g) * 0.2
        state[f"body.{k}.bias"] = torch.randn(widths[i + 1], generator=g) * 0.1
        if prelu and i < num_conv + 1:
            state[f"body.{k + 1}.weight"] = torch.rand(widths[i + 1], generator=g) * 0.3
        k += 2
    return state


def _srvgg_forward(state, x, scale, act):
    """SRVGGNetCompact.forward as Real-ESRGAN writes it, from the raw state dict."""
    conv_ids = sorted(int(k.split(".")[1]) for k in state if k.endswith(".bias"))
    out = x
    for idx in conv_ids:
        out = F.conv2d(out, state[f"body.{idx}.weight"], state[f"body.{idx}.bias"], padding=1)
        if idx != conv_ids[-1]:
            if act == "prelu":
                out = F.prelu(out, state[f"body.{idx + 1}.weight"])
            elif act == "lrelu":
                out = F.leaky_relu(out, 0.1)
            else:
                out = F.relu(out)
    out = F.pixel_shuffle(out, scale)
    return out + F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
@pytest.mark.parametrize("scale", [1, 2, 4])
def test_load_srvgg_pth(tmp_path, wrapper, scale):
    state = _srvgg_state(scale=scale, seed=scale)
    path = tmp_path / "srvgg.pth"
    torch.save({wrapper: state} if wrapper else state, path)
    plain = PlainSR.load(path)
    assert plain.scale == scale and plain.act_type == "prelu" and plain.channels[1] == 8
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(plain(x), _srvgg_forward(state, x, scale, "prelu"), atol=1e-6, rtol=1e-6)


def test_load_srvgg_safetensors_without_prelu(tmp_path):
    state = _srvgg_state(prelu=False, scale=2)
    path = tmp_path / "srvgg.safetensors"
    save_file(state, str(path))
    with pytest.warns(UserWarning, match="assuming 'lrelu'"):
        plain = PlainSR.load(path)
    x = _x(3)
    with torch.no_grad():
        assert torch.allclose(plain(x), _srvgg_forward(state, x, 2, "lrelu"), atol=1e-6)
        relu = PlainSR.load(path, act="relu")
        assert torch.allclose(relu(x), _srvgg_forward(state, x, 2, "relu"), atol=1e-6)


def test_srvgg_bad_layouts(tmp_path):
    state = _srvgg_state()
    state.pop("body.4.weight")
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(DeployedFileError, match="body.0, body.2"):
        PlainSR.load(path)
    state = _srvgg_state(scale=2)
    state["body.8.weight"] = torch.randn(10, 8, 3, 3)
    state["body.8.bias"] = torch.randn(10)
    torch.save(state, path)
    with pytest.raises(DeployedFileError, match="not 3 x scale"):
        PlainSR.load(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_srvgg_round_trip(tmp_path, suffix):
    plain = _plain(act="prelu", scale=4, seed=4)
    path = tmp_path / f"export{suffix}"
    plain.export_srvgg(path)
    if suffix == ".pth":
        raw = torch.load(path, weights_only=True)["params"]
    else:
        raw = load_file(str(path))
    x = _x(4)
    with torch.no_grad():
        ref = _srvgg_forward(raw, x, 4, "prelu")
        assert (plain(x) - ref).abs().max().item() <= 1e-5
        assert torch.equal(PlainSR.load(path)(x), plain(x))


def _srvgg_forward64(state, x, scale):
    """SRVGGNetCompact with PReLU, in float64, from a raw state dict (an independent reference)."""
    return _srvgg_forward({k: v.double() for k, v in state.items()}, x.double(), scale, "prelu")


@pytest.mark.parametrize("act, slope", [("relu", None), ("lrelu", 0.1), ("lrelu", 0.2), ("identity", None), ("prelu", None)])
def test_export_srvgg_writes_every_activation_as_prelu(tmp_path, act, slope):
    kwargs = {"lrelu_slope": slope} if slope is not None else {}
    net = randomize_(RepSRNet(scale=2, channels=6, num_blocks=2, act=act, **kwargs), seed=7)
    plain = net.eval().reparameterize()
    path = tmp_path / "x.pth"
    plain.export_srvgg(path)
    raw = torch.load(path, weights_only=True)["params"]
    assert all(f"body.{2 * k + 1}.weight" in raw for k in range(plain.num_layers - 1))
    x = _x(7)
    with torch.no_grad():
        ref = _srvgg_forward64(raw, x, 2)
        # float32 against float64: relative L2 error of a float32 conv chain
        assert ((plain(x).double() - ref).norm() / ref.norm()).item() <= 1e-6
        again = PlainSR.load(path)
        assert again.act_type == "prelu" and torch.allclose(again(x), plain(x), atol=1e-6)


def test_export_srvgg_rejects_what_it_cannot_represent(tmp_path):
    weights = [torch.randn(6, 3, 3, 3), torch.randn(8, 6, 3, 3), torch.randn(12, 8, 3, 3)]
    biases = [torch.randn(6), torch.randn(8), torch.randn(12)]
    mixed = PlainSR(weights, biases, act="relu", scale=2)
    with pytest.raises(ValueError, match="same width"):
        mixed.export_srvgg(tmp_path / "x.pth")
    no_residual = PlainSR(weights[:1] + [torch.randn(12, 6, 3, 3)], biases[:1] + [torch.randn(12)],
                          act="relu", scale=2, residual="none")
    with pytest.raises(ValueError, match="residual"):
        no_residual.export_srvgg(tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()


def _flip_tensor_byte(path):
    """Flips the lowest mantissa bit of the third-last float32 in the file: a small change that
    every range check lets through."""
    data = bytearray(path.read_bytes())
    data[-12] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_tensor_data_is_detected(tmp_path):
    path = tmp_path / "m.safetensors"
    _plain(seed=5).save(path)
    assert len(_metadata(path)["tensors_sha256"]) == 64
    _flip_tensor_byte(path)  # inside the last tensor's bytes: safetensors itself cannot tell
    with pytest.raises(DeployedFileError, match="m.safetensors: corrupt"):
        PlainSR.load(path)


def test_random_damage_never_loads_silently(tmp_path):
    """120 copies of the shipped model, each with one flipped bit anywhere: an error naming the
    file, never a silent load of other weights or a crash."""
    from repsr_ext.cli import MODELS_DIR

    clean = MODELS_DIR / "repsr_m4c16_x4.safetensors"
    if not clean.is_file():
        clean = tmp_path / "clean.safetensors"
        _plain(seed=6).save(clean)
    data = clean.read_bytes()
    rng = torch.Generator().manual_seed(6)
    for trial in range(120):
        damaged = bytearray(data)
        position = int(torch.randint(len(data), (1,), generator=rng))
        damaged[position] ^= 1 << int(torch.randint(8, (1,), generator=rng))
        path = tmp_path / f"damaged{trial}.safetensors"
        path.write_bytes(bytes(damaged))
        try:
            PlainSR.load(path)
        except (DeployedFileError, FileNotFoundError) as e:
            assert f"damaged{trial}" in str(e)
        else:
            # Only a flip that changes no tensor byte and no checked metadata can load (e.g. in
            # the header's padding or the package_version string).
            loaded = PlainSR.load(path).state_dict()
            assert all(torch.equal(v, PlainSR.load(clean).state_dict()[k]) for k, v in loaded.items())


def test_file_without_checksum_loads_with_a_note(tmp_path):
    path = tmp_path / "old.safetensors"
    plain = _plain(seed=8)
    plain.save(path)
    tensors = load_file(str(path))
    meta = _metadata(path)
    del meta["tensors_sha256"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.warns(UserWarning, match="without a checksum"):
        loaded = PlainSR.load(path)
    x = _x(8)
    with torch.no_grad():
        assert torch.equal(loaded(x), plain(x))


def test_absurd_weights_are_reported(tmp_path):
    state = _srvgg_state(scale=2)
    state["body.2.weight"][0, 0, 1, 1] = 3e5
    path = tmp_path / "absurd.pth"
    torch.save(state, path)
    with pytest.raises(DeployedFileError, match="absurd.pth: tensor 'body.2.weight' has a value of magnitude 3e"):
        PlainSR.load(path)


def test_act_must_agree_with_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    _plain(act="relu", seed=9).save(path)
    assert PlainSR.load(path, act="relu").act_type == "relu"
    with pytest.raises(DeployedFileError, match="records activation 'relu', not 'lrelu'"):
        PlainSR.load(path, act="lrelu")
    srvgg = tmp_path / "prelu.pth"
    torch.save(_srvgg_state(scale=2), srvgg)
    with pytest.raises(DeployedFileError, match="has PReLU weights"):
        PlainSR.load(srvgg, act="relu")
