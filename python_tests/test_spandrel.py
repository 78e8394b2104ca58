"""The SRVGGNetCompact files `export_srvgg` writes, loaded by spandrel itself (the loader most SR
tools use). Needs spandrel, which needs torchvision: install both without letting them replace
torch (pip install --no-deps spandrel torchvision==<the one for your torch>); skipped otherwise."""
import pytest
import torch

from helpers import randomize_
from repsr_ext import RepSRNet

spandrel = pytest.importorskip("spandrel", reason="spandrel is not installed (it needs torchvision)")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("act, slope", [("prelu", None), ("relu", None), ("lrelu", 0.1), ("lrelu", 0.2),
                                        ("identity", None)])
def test_spandrel_loads_every_exported_activation(tmp_path, act, slope, suffix):
    kwargs = {"lrelu_slope": slope} if slope is not None else {}
    scale = 4 if act == "prelu" else 2
    net = randomize_(RepSRNet(scale=scale, channels=8, num_blocks=3, act=act, **kwargs), seed=31, scale=0.1)
    plain = net.eval().reparameterize()
    path = tmp_path / f"srvgg{suffix}"
    plain.export_srvgg(path)
    descriptor = spandrel.ModelLoader().load_from_file(str(path))
    assert descriptor.architecture.name.lower().startswith(("realesrgan", "compact", "srvgg")), descriptor.architecture
    assert descriptor.scale == scale
    model = descriptor.model.eval()
    x = torch.rand(1, 3, 11, 9, generator=torch.Generator().manual_seed(32))
    with torch.no_grad():
        ours, theirs = plain(x).double(), model(x).double()
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-6
