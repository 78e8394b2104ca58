"""RepSRNet -> PlainSR re-parameterization, presets, and the network-level BN switch."""
import itertools

import pytest
import torch

from helpers import randomize_, reference_chain, rel_err
from repsr_ext import BLOCKS, PRESETS, PlainSR, RepSRNet

ACTS = ["prelu", "relu", "lrelu", "identity"]


def _input(seed, shape, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("act", ACTS)
def test_reparameterize_float64_every_block_and_activation(block, act):
    net = randomize_(RepSRNet(scale=2, channels=6, num_blocks=2, block=block, act=act).double(), seed=7)
    net.eval()
    x = _input(1, (2, 3, 9, 7))
    plain = net.reparameterize()
    with torch.no_grad():
        diff = (plain(x) - net(x)).abs().max().item()
    assert diff <= 1e-10, f"{block}/{act}: max abs diff {diff:.3e}"


@pytest.mark.parametrize(
    "expansion,bn", list(itertools.product([1, 2, 3], ["both", "expand", "squeeze", "none"]))
)
def test_reparameterize_repsr_options(expansion, bn):
    net = RepSRNet(scale=3, channels=5, num_blocks=2, block="repsr", expansion=expansion, bn=bn)
    net = randomize_(net.double(), seed=expansion).eval()
    x = _input(2, (1, 3, 6, 8))
    with torch.no_grad():
        diff = (net.reparameterize()(x) - net(x)).abs().max().item()
    assert diff <= 1e-10


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_reparameterize_float32_relative_error(block):
    net = randomize_(RepSRNet(scale=4, channels=8, num_blocks=3, block=block), seed=3).eval()
    x = _input(3, (2, 3, 11, 10), torch.float32)
    with torch.no_grad():
        ref = net.double()(x.double())
        net.float()
        out = net.reparameterize()(x)
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("block", ["repsr", "repvgg", "dbb", "acb"])
def test_population_mode_in_training_matches_deployed(block):
    """After the switch, the training forward (train mode) is exactly what gets deployed."""
    net = randomize_(RepSRNet(scale=2, channels=6, num_blocks=2, block=block).double(), seed=11)
    net.switch_bn_to_population()
    net.train()
    x = _input(4, (3, 3, 8, 8))
    with torch.no_grad():
        diff = (net.reparameterize()(x) - net(x)).abs().max().item()
    assert net.bn_phase == "population"
    assert diff <= 1e-10


def test_plain_sr_matches_independent_reference():
    net = randomize_(RepSRNet(scale=3, channels=7, num_blocks=2, act="prelu").double(), seed=5).eval()
    plain = net.reparameterize()
    weights, biases, slopes = plain.layer_tensors()
    x = _input(5, (2, 3, 5, 6))
    with torch.no_grad():
        ref = reference_chain(x, weights, biases, slopes, scale=3)
        assert (plain(x) - ref).abs().max().item() <= 1e-12


def test_bn_switch_survives_train_and_state_dict():
    net = randomize_(RepSRNet(scale=2, channels=4, num_blocks=1), seed=1)
    assert net.bn_phase == "batch"
    net.switch_bn_to_population()
    net.train()
    net.train(True)
    assert net.bn_phase == "population"
    fresh = RepSRNet(scale=2, channels=4, num_blocks=1)
    assert fresh.bn_phase == "batch"
    fresh.load_state_dict(net.state_dict())
    assert fresh.bn_phase == "population"
    # Running statistics are frozen after the switch.
    before = [bn.running_mean.clone() for bn in fresh.batchnorms()]
    fresh.train()
    fresh(_input(6, (4, 3, 8, 8), torch.float32))
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, fresh.batchnorms()))


def test_batch_phase_updates_statistics():
    net = RepSRNet(scale=2, channels=4, num_blocks=1).train()
    before = [bn.running_mean.clone() for bn in net.batchnorms()]
    net(_input(7, (4, 3, 8, 8), torch.float32) + 0.5)
    assert any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, net.batchnorms()))


def test_plain_block_net_has_no_bn():
    assert RepSRNet(scale=2, channels=4, num_blocks=1, block="plain").bn_phase == "none"


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_presets(name, scale):
    num_blocks, channels = PRESETS[name]
    net = RepSRNet.preset(name, scale=scale)
    assert net.channels == [3] + [channels] * (num_blocks + 1) + [3 * scale * scale]
    assert len(net.blocks) == num_blocks + 2
    plain = net.eval().reparameterize()
    assert plain.num_layers == num_blocks + 2
    with torch.no_grad():
        assert plain(torch.rand(1, 3, 5, 4)).shape == (1, 3, 5 * scale, 4 * scale)


def test_custom_preset_name_and_errors():
    assert RepSRNet.preset("M2C12", scale=2).channels == [3, 12, 12, 12, 12]
    with pytest.raises(ValueError, match="unknown preset 'X9'"):
        RepSRNet.preset("X9", scale=2)


def test_residual_none_and_other_channel_counts():
    net = randomize_(RepSRNet(2, 5, 1, in_channels=1, out_channels=2, residual="none").double(), seed=2).eval()
    x = _input(8, (1, 1, 6, 6))
    with torch.no_grad():
        out = net.reparameterize()(x)
        assert out.shape == (1, 2, 12, 12)
        assert (out - net(x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(scale=0, channels=4, num_blocks=1), "scale"),
        (dict(scale=2, channels=0, num_blocks=1), "channels"),
        (dict(scale=2, channels=4, num_blocks=-1), "num_blocks"),
        (dict(scale=2, channels=4, num_blocks=1, act="gelu"), "activation 'gelu'"),
        (dict(scale=2, channels=4, num_blocks=1, block="nope"), "nope"),
        (dict(scale=2, channels=4, num_blocks=1, residual="bilinear"), "residual"),
        (dict(scale=2, channels=4, num_blocks=1, in_channels=1, out_channels=3), "in_channels"),
        (dict(scale=2, channels=True, num_blocks=1), "channels must be a positive integer, got True"),
        (dict(scale=2, channels=4, num_blocks=1, act="lrelu", lrelu_slope="x"), "lrelu_slope must be a finite number"),
        (dict(scale=2, channels=4, num_blocks=1, act="lrelu", lrelu_slope=float("nan")), "lrelu_slope"),
    ],
)
def test_bad_network_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RepSRNet(**kwargs)


def test_plain_sr_rejects_inconsistent_layers():
    w = [torch.randn(4, 3, 3, 3), torch.randn(12, 5, 3, 3)]
    with pytest.raises(ValueError, match="layer 1: weight expects 5 input channels"):
        PlainSR(w, [torch.randn(4), torch.randn(12)], act="relu", scale=2)
    with pytest.raises(ValueError, match="not a multiple of scale"):
        PlainSR([torch.randn(4, 3, 3, 3), torch.randn(10, 4, 3, 3)], [torch.randn(4), torch.randn(10)], act="relu", scale=2)
    with pytest.raises(ValueError, match="lrelu_slope must be a finite number, got inf"):
        PlainSR(w[:1], [torch.randn(4)], act="lrelu", scale=1, residual="none", lrelu_slope=float("inf"))


def test_reparameterize_is_one_conversion_not_per_forward():
    """The deployed module holds plain convs: no block, no BN is left to re-fuse on each call."""
    plain = RepSRNet(2, 4, 2, block="dbb").eval().reparameterize()
    kinds = {type(m).__name__ for m in plain.modules()}
    assert kinds <= {"PlainSR", "ModuleList", "Conv2d", "PReLU"}
