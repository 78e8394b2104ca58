"""Tests for repsr_ext.blocks: exact fusion of every block, border padding, and the BN phases."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repsr_ext.blocks import (
    BLOCKS,
    ACBlock,
    DBBlock,
    ECBlock,
    ModifiedBatchNorm2d,
    PlainBlock,
    RepSRBlock,
    RepVGGBlock,
    bn_to_kernel,
    fuse_bn,
    make_block,
)

CHANNEL_PAIRS = [(8, 8), (3, 8), (8, 12)]

BLOCK_CONFIGS = (
    [("plain", {}), ("repvgg", {}), ("acb", {}), ("dbb", {}), ("dbb", {"internal_channels": 5})]
    + [("ecb", {"depth_multiplier": m}) for m in (1, 2)]
    + [
        ("repsr", {"expansion": e, "bn": bn})
        for e in (1, 2, 3)
        for bn in ("both", "expand", "squeeze", "none")
    ]
)


def config_id(config):
    name, options = config
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()])


def randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Random parameters everywhere and random BN running statistics, so no branch is trivial."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
        for bn in module.modules():
            if isinstance(bn, ModifiedBatchNorm2d):
                shape, dtype = bn.running_mean.shape, bn.running_mean.dtype
                bn.running_mean.copy_(torch.randn(shape, generator=generator, dtype=dtype))
                variance = 0.5 + 1.5 * torch.rand(shape, generator=generator, dtype=dtype)
                bn.running_var.copy_(variance)
                if bn.affine:
                    bn.weight.copy_(0.5 + torch.rand(shape, generator=generator, dtype=dtype))
                    bn.weight.mul_(torch.randn(shape, generator=generator, dtype=dtype).sign())
                    bn.bias.copy_(torch.randn(shape, generator=generator, dtype=dtype))


def random_block(name, in_channels, out_channels, options, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    block = make_block(name, in_channels, out_channels, **options).to(dtype)
    randomize(block, generator)
    x = torch.randn(2, in_channels, 7, 9, generator=generator, dtype=dtype)
    return block, x


def switch_to_population(module: nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, ModifiedBatchNorm2d):
            bn.switch_to_population()


def fused_forward(block, x):
    weight, bias = block.fuse()
    return F.conv2d(x, weight, bias, padding=1)


# ---- exact fusion --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", CHANNEL_PAIRS, ids=lambda c: f"{c[0]}to{c[1]}")
@pytest.mark.parametrize("config", BLOCK_CONFIGS, ids=config_id)
def test_fuse_is_exact_in_float64(config, channels):
    name, options = config
    block, x = random_block(name, *channels, options, torch.float64)

    block.eval()
    reference = block(x)
    assert reference.shape == (2, channels[1], 7, 9)
    assert (fused_forward(block, x) - reference).abs().max() <= 1e-10

    # Population phase in training mode: the training forward is the deployed conv as well.
    switch_to_population(block)
    block.train()
    with torch.no_grad():
        train_output = block(x)
    assert (train_output - reference).abs().max() <= 1e-10
    assert (fused_forward(block, x) - train_output).abs().max() <= 1e-10


@pytest.mark.parametrize("channels", CHANNEL_PAIRS, ids=lambda c: f"{c[0]}to{c[1]}")
@pytest.mark.parametrize("config", BLOCK_CONFIGS, ids=config_id)
def test_fuse_in_float32(config, channels):
    name, options = config
    block, x = random_block(name, *channels, options, torch.float32, seed=1)
    block.eval()
    with torch.no_grad():
        reference = block(x)
    weight, bias = block.fuse()
    assert weight.dtype == bias.dtype == torch.float32
    error = torch.linalg.vector_norm(F.conv2d(x, weight, bias, padding=1) - reference)
    assert error / torch.linalg.vector_norm(reference) <= 1e-5


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_fuse_returns_detached_contiguous_oihw(name):
    block, _ = random_block(name, 3, 8, {}, torch.float64)
    weight, bias = block.fuse()
    assert weight.shape == (8, 3, 3, 3) and bias.shape == (8,)
    assert not weight.requires_grad and not bias.requires_grad
    assert weight.is_contiguous() and bias.is_contiguous()
    # The result is a copy: changing it must not touch the block.
    weight.add_(1.0)
    assert not torch.equal(block.fuse()[0], weight)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_every_bn_is_a_modified_bn(name):
    block = make_block(name, 8, 8)
    batchnorms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(isinstance(m, ModifiedBatchNorm2d) for m in batchnorms)
    if name in ("repvgg", "acb", "dbb", "repsr"):
        assert batchnorms


def test_repsr_structure_follows_options():
    def count_bn(block):
        return sum(isinstance(m, ModifiedBatchNorm2d) for m in block.modules())

    assert count_bn(RepSRBlock(8, 8, bn="both")) == 4
    assert count_bn(RepSRBlock(8, 8, bn="expand")) == 2
    assert count_bn(RepSRBlock(8, 8, bn="squeeze")) == 2
    assert count_bn(RepSRBlock(8, 8, bn="none")) == 0
    block = RepSRBlock(4, 6, expansion=3)
    assert block.path1.expand.out_channels == 18 and not block.has_identity
    assert RepSRBlock(6, 6).has_identity


def test_fuse_bn_and_identity_bn():
    generator = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(4, 5, (1, 3), padding=(0, 1)).double()
    bn = ModifiedBatchNorm2d(5, affine=False).double()
    randomize(nn.Sequential(conv, bn), generator)
    x = torch.randn(2, 4, 6, 5, generator=generator, dtype=torch.float64)
    bn.eval()
    kernel, bias = fuse_bn(conv.weight, conv.bias, bn)
    assert torch.allclose(F.conv2d(x, kernel, bias, padding=(0, 1)), bn(conv(x)), atol=1e-12)

    identity_bn = ModifiedBatchNorm2d(4).double().eval()
    randomize(identity_bn, generator)
    kernel, bias = bn_to_kernel(identity_bn)
    assert torch.allclose(F.conv2d(x, kernel, bias, padding=1), identity_bn(x), atol=1e-12)


# ---- border padding with the bias ----------------------------------------------------------------


def pad_with(x, values):
    """Independent reference for the border: F.pad with zeros, then add the value on the ring."""
    ring = F.pad(torch.zeros_like(x), (1, 1, 1, 1), value=1.0)
    return F.pad(x, (1, 1, 1, 1)) + ring * values.view(1, -1, 1, 1)


def bn_eval(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def bn_zero_response(bn):
    return bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)


def dbb_reference(block: DBBlock, x, pad_fill):
    """DBB eval forward built from functional ops; ``pad_fill(bn) -> [C]`` fills the border."""
    out = sum(bn_eval(branch[0](x), branch[1]) for branch in (block.conv3x3, block.conv1x1))
    avg_in = bn_eval(block.avg_pointwise(x), block.avg_bn_pad.bn)
    avg = F.avg_pool2d(pad_with(avg_in, pad_fill(block.avg_bn_pad.bn)), 3, stride=1)
    kxk_in = bn_eval(block.kxk_pointwise(x), block.kxk_bn_pad.bn)
    kxk = F.conv2d(pad_with(kxk_in, pad_fill(block.kxk_bn_pad.bn)), block.kxk_conv.weight)
    return out + bn_eval(avg, block.avg_bn) + bn_eval(kxk, block.kxk_bn)


def ecb_reference(block: ECBlock, x, pad_fill):
    """ECB forward built from functional ops; ``pad_fill(conv1x1) -> [C]`` fills the border."""

    def pointwise_then(conv1x1, weight, bias, groups=1):
        y = pad_with(conv1x1(x), pad_fill(conv1x1))
        return F.conv2d(y, weight, bias, groups=groups)

    out = block.conv3x3(x)
    expand = block.expand_conv
    out = out + pointwise_then(block.expand_pointwise, expand.weight, expand.bias)
    for edge in (block.sobel_x, block.sobel_y, block.laplacian):
        edge_kernel = edge.scale * edge.mask
        out = out + pointwise_then(edge.pointwise, edge_kernel, edge.bias, groups=edge.channels)
    return out


@pytest.mark.parametrize(
    "block_class, reference, bias_fill",
    [
        (DBBlock, dbb_reference, bn_zero_response),
        (ECBlock, ecb_reference, lambda conv1x1: conv1x1.bias),
    ],
    ids=["dbb", "ecb"],
)
def test_border_is_padded_with_the_bias(block_class, reference, bias_fill):
    generator = torch.Generator().manual_seed(3)
    block = block_class(6, 6).double().eval()
    randomize(block, generator)
    x = torch.randn(2, 6, 7, 9, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        output = block(x)
        bias_padded = reference(block, x, bias_fill)
        zero_padded = reference(block, x, lambda module: torch.zeros_like(bias_fill(module)))
        fused = fused_forward(block, x)

    assert (output - bias_padded).abs().max() <= 1e-10
    assert (fused - bias_padded).abs().max() <= 1e-10
    # Zero padding agrees in the interior but is clearly wrong on the border ring: a merge that
    # ignored the bias padding could not pass the two checks above.
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (zero_padded[interior] - output[interior]).abs().max() <= 1e-10
    border_error = (zero_padded - output).abs()
    border_error[interior] = 0
    assert border_error.amax(dim=(0, 2, 3)).min() > 1e-3  # every channel, not a lucky few


# ---- ModifiedBatchNorm2d phases ------------------------------------------------------------------


def trained_bn(seed=4):
    """A BN whose running stats and affine parameters are random, plus a non-centred input."""
    generator = torch.Generator().manual_seed(seed)
    bn = ModifiedBatchNorm2d(5)
    randomize(bn, generator)
    x = 3.0 + 2.0 * torch.randn(4, 5, 6, 7, generator=generator)
    return bn, x


def test_batch_phase_is_ordinary_bn():
    bn, x = trained_bn()
    reference = nn.BatchNorm2d(5)
    reference.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "population_mode"})
    assert not bn.uses_population_stats

    bn.train()
    reference.train()
    mean_before = bn.running_mean.clone()
    train_output = bn(x)
    assert torch.equal(train_output, reference(x))
    assert not torch.equal(bn.running_mean, mean_before)
    assert torch.equal(bn.running_var, reference.running_var)
    assert bn.num_batches_tracked.item() == 1

    bn.eval()
    assert (bn(x) - train_output).abs().max() > 1e-2  # mini-batch stats != running stats


def test_population_phase_freezes_statistics_and_keeps_learning():
    bn, x = trained_bn()
    bn.switch_to_population()
    bn.train()
    assert bn.uses_population_stats and bn.training
    stats_before = [t.clone() for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)]

    x.requires_grad_(True)
    output = bn(x)
    output.square().sum().backward()
    stats_after = (bn.running_mean, bn.running_var, bn.num_batches_tracked)
    for before, after in zip(stats_before, stats_after):
        assert torch.equal(before, after)
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0
    assert x.grad is not None

    bn.eval()
    with torch.no_grad():
        assert torch.equal(output.detach(), bn(x))


def test_train_and_eval_do_not_change_the_phase():
    block = RepSRBlock(4, 4)
    switch_to_population(block)
    for toggle in (block.eval, block.train, block.eval, block.train):
        toggle()
        batchnorms = [m for m in block.modules() if isinstance(m, ModifiedBatchNorm2d)]
        assert all(bn.uses_population_stats for bn in batchnorms)
    block.double()
    assert block.path1.expand_bn.population_mode.dtype == torch.bool
    assert block.path1.expand_bn.uses_population_stats


def test_state_dict_round_trip_restores_the_phase():
    source, x = trained_bn()
    source.switch_to_population()
    state = source.state_dict()
    assert state["population_mode"].item() is True

    restored = ModifiedBatchNorm2d(5)
    restored.load_state_dict(state)
    assert restored.uses_population_stats
    restored.train()
    source.train()
    assert torch.equal(restored(x), source(x))
    assert restored.num_batches_tracked.item() == 0  # still frozen after a training forward

    # Nested in a block, through the parent's load_state_dict.
    block = DBBlock(3, 4)
    switch_to_population(block)
    fresh = DBBlock(3, 4)
    fresh.load_state_dict(block.state_dict())
    assert fresh.avg_bn_pad.bn.uses_population_stats and fresh.kxk_bn.uses_population_stats
    assert "phase=batch" not in repr(fresh) and "phase=population" in repr(fresh)


def test_loading_a_state_dict_without_the_phase_means_batch():
    bn, x = trained_bn()
    legacy_state = nn.BatchNorm2d(5).state_dict()
    assert "population_mode" not in legacy_state

    bn.switch_to_population()
    bn.load_state_dict(legacy_state)  # strict: the missing phase is not an error
    assert not bn.uses_population_stats
    bn.train()
    bn(x)
    assert bn.num_batches_tracked.item() == 1

    block = RepVGGBlock(4, 4)
    state = {k: v for k, v in block.state_dict().items() if not k.endswith("population_mode")}
    block.load_state_dict(state)


# ---- construction errors -------------------------------------------------------------------------


def test_make_block_builds_every_registered_block():
    expected = {
        "plain": PlainBlock,
        "repvgg": RepVGGBlock,
        "acb": ACBlock,
        "dbb": DBBlock,
        "ecb": ECBlock,
        "repsr": RepSRBlock,
    }
    assert BLOCKS == expected
    for name, block_class in expected.items():
        block = make_block(name, 3, 5)
        assert type(block) is block_class
        assert (block.in_channels, block.out_channels) == (3, 5)


def test_unknown_block_name():
    with pytest.raises(ValueError, match="'resnet'") as info:
        make_block("resnet", 4, 4)
    assert all(name in str(info.value) for name in BLOCKS)


@pytest.mark.parametrize(
    "name, options, parameter",
    [
        ("repsr", {"expansion": 0}, "expansion"),
        ("repsr", {"expansion": 1.5}, "expansion"),
        ("repsr", {"bn": "after"}, "bn"),
        ("ecb", {"depth_multiplier": 0}, "depth_multiplier"),
        ("dbb", {"internal_channels": -1}, "internal_channels"),
        ("plain", {"expansion": 2}, "expansion"),
    ],
)
def test_bad_options(name, options, parameter):
    with pytest.raises(ValueError, match=parameter):
        make_block(name, 4, 4, **options)


def test_bad_bn_placement_lists_the_allowed_values():
    with pytest.raises(ValueError) as info:
        RepSRBlock(4, 4, bn="after")
    assert all(placement in str(info.value) for placement in ("both", "expand", "squeeze", "none"))


def test_bad_channel_counts():
    with pytest.raises(ValueError, match="in_channels"):
        make_block("repsr", 0, 4)
    with pytest.raises(ValueError, match="out_channels"):
        make_block("plain", 4, -2)
