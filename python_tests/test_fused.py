"""The fused op and FusedSR against an independent float64 F.conv2d chain (helpers.reference_chain).

Tolerances: float32 output relative L2 error <= 1e-5 against float64 (accumulation of up to
16 x 64 x 9 products in float32); uint8 output exactly round(clamp(ref) * 255) except where the
reference lies within 1e-3 of a rounding boundary, where one level either way is allowed.
"""
import random

import numpy as np
import pytest
import torch

from helpers import randomize_, reference_chain, rel_err
from repsr_ext import FusedSR, PlainSR, RepSRNet, ops


@pytest.fixture(scope="module", autouse=True)
def extension():
    ops.require_extension()  # fail loudly, with the fix, rather than skip


ACT_KINDS = ["identity", "relu", "lrelu", "prelu"]


def random_net(channels, scale, seed, acts=None, residual=True):
    """Weights/biases/slopes for a chain with the given layer boundary widths; the tail gets
    out * scale^2 channels. Activations differ per layer when `acts` is None."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    widths = list(channels)
    weights, biases, slopes = [], [], []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        weights.append(torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5 * 1.2)
        biases.append(torch.randn(cout, generator=g) * 0.1)
        if i < len(widths) - 2:
            kind = acts or rng.choice(ACT_KINDS)
            slope = {
                "identity": torch.ones(cout),
                "relu": torch.zeros(cout),
                "lrelu": torch.full((cout,), 0.1),
                "prelu": torch.rand(cout, generator=g) * 0.5 - 0.1,
            }[kind]
            slopes.append(slope)
    return weights, biases, slopes


def run_op(x, net, scale, residual=True, clamp=False):
    w, b, s = net
    return torch.ops.repsr_ext.fused_sr(x, w, b, s, scale, residual, clamp)


def check(x, net, scale, residual=True, clamp=False):
    out = run_op(x, net, scale, residual, clamp)
    ref = reference_chain(x, *net, scale=scale, residual=residual, clamp=clamp)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5, f"relative error {rel_err(out, ref):.2e}"


def _input(shape, seed, channels_last=False):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("act", ACT_KINDS)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_every_activation_and_scale(act, scale):
    net = random_net([3, 16, 16, 16, 3 * scale * scale], scale, seed=scale, acts=act)
    check(_input((2, 3, 13, 11), seed=scale), net, scale)


@pytest.mark.parametrize("width", [1, 4, 8, 13, 16, 24, 32, 48, 64])
def test_channel_counts(width):
    net = random_net([3, width, width, 12], 2, seed=width)
    check(_input((1, 3, 19, 23), seed=width), net, 2)


@pytest.mark.parametrize("num_layers", [1, 2, 3, 5, 8, 16])
def test_depths(num_layers):
    widths = [3] + [8] * (num_layers - 1) + [27]
    net = random_net(widths, 3, seed=num_layers)
    check(_input((2, 3, 10, 9), seed=num_layers), net, 3)


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (7, 3), (37, 71), (64, 64), (97, 130)])
def test_image_sizes(size):
    net = random_net([3, 16, 16, 16, 16, 48], 4, seed=sum(size))
    check(_input((1, 3, *size), seed=sum(size)), net, 4)


def test_random_networks_mixed_widths():
    rng = random.Random(42)
    for trial in range(12):
        num_layers = rng.randint(1, 7)
        scale = rng.randint(1, 4)
        cin = rng.choice([1, 3, 4])
        widths = [cin] + [rng.choice([1, 4, 8, 13, 16, 24, 32]) for _ in range(num_layers - 1)]
        widths.append(cin * scale * scale)
        h, w = rng.randint(1, 40), rng.randint(1, 40)
        net = random_net(widths, scale, seed=trial)
        check(_input((rng.randint(1, 3), cin, h, w), seed=trial), net, scale, clamp=rng.random() < 0.5)


def test_no_residual_and_different_out_channels():
    net = random_net([4, 8, 8, 2 * 9], 3, seed=5)
    check(_input((2, 4, 9, 8), seed=5), net, 3, residual=False)


def test_clamp():
    net = random_net([3, 8, 8, 12], 2, seed=6)
    x = _input((1, 3, 16, 16), seed=6) * 3 - 1
    check(x, net, 2, clamp=True)
    assert run_op(x, net, 2, clamp=True).min() >= 0 and run_op(x, net, 2, clamp=True).max() <= 1


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded_batch"])
def test_input_layouts(layout):
    net = random_net([3, 16, 16, 12], 2, seed=7)
    base = _input((3, 3, 20, 24), seed=7)
    x = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3).contiguous().transpose(2, 3),
        "sliced": _input((3, 5, 41, 50), seed=8)[:, 1:4, ::2, 1::2],
        "expanded_batch": base[:1].expand(3, -1, -1, -1),
    }[layout]
    assert not x.is_contiguous()
    out = run_op(x, net, 2)
    assert torch.equal(out, run_op(x.contiguous(), net, 2))
    check(x, net, 2)


def test_empty_batch():
    net = random_net([3, 8, 12], 2, seed=9)
    out = run_op(torch.rand(0, 3, 5, 5), net, 2)
    assert out.shape == (0, 3, 10, 10)


def test_uint8_path_matches_reference_rounding():
    net = random_net([3, 16, 16, 16, 48], 4, seed=10)
    g = torch.Generator().manual_seed(10)
    image = torch.randint(0, 256, (2, 23, 17, 3), generator=g, dtype=torch.uint8)
    w, b, s = net
    out = torch.ops.repsr_ext.fused_sr_u8(image, w, b, s, 4, True)
    assert out.shape == (2, 92, 68, 3) and out.dtype == torch.uint8
    x = image.permute(0, 3, 1, 2).double() / 255
    ref = (reference_chain(x, *net, scale=4, clamp=True) * 255).permute(0, 2, 3, 1)
    expected = torch.round(ref)
    diff = (out.double() - expected).abs()
    near_half = ((ref - ref.floor()) - 0.5).abs() < 1e-3
    assert diff.max() <= 1
    assert (diff[~near_half] == 0).all()


@pytest.mark.parametrize("tile", [1, 5, 16, 33])
def test_fusedsr_tiled_equals_untiled(tile):
    net = randomize_(RepSRNet.preset("M4C16", scale=3), seed=12).eval()
    fused = FusedSR.load(net)
    x = _input((2, 3, 41, 37), seed=12)
    assert torch.equal(fused(x, tile=tile), fused(x))


def test_fusedsr_tiled_uint8_equals_untiled():
    fused = FusedSR.load(randomize_(RepSRNet.preset("M4C8", scale=2), seed=13).eval())
    image = np.random.default_rng(13).integers(0, 256, (45, 31, 3), dtype=np.uint8)
    assert np.array_equal(fused.upscale(image, tile=8), fused.upscale(image))


def test_fusedsr_matches_training_network(tmp_path):
    net = randomize_(RepSRNet.preset("M4C16", scale=4, block="repsr"), seed=14)
    net.switch_bn_to_population()
    x = _input((2, 3, 24, 20), seed=14)
    with torch.no_grad():
        ref = net.double()(x.double())
    net.float()
    path = tmp_path / "m.safetensors"
    net.reparameterize().save(path)
    for source in (net, net.reparameterize(), path, str(path)):
        out = FusedSR.load(source)(x)
        assert rel_err(out, ref) <= 1e-5


def test_upscale_image_kinds(tmp_path):
    from PIL import Image

    fused = FusedSR.load(randomize_(RepSRNet.preset("M4C8", scale=2), seed=15).eval())
    array = np.random.default_rng(15).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = fused.upscale(array)
    assert isinstance(out, np.ndarray) and out.shape == (40, 60, 3) and out.dtype == np.uint8
    pil = fused.upscale(Image.fromarray(array))
    assert isinstance(pil, Image.Image) and pil.size == (60, 40)
    assert np.array_equal(np.asarray(pil), out)
    Image.fromarray(array).save(tmp_path / "in.png")
    assert np.array_equal(np.asarray(fused.upscale(tmp_path / "in.png")), out)
    rgba = Image.fromarray(np.dstack([array, np.full((20, 30), 128, np.uint8)]), "RGBA")
    up = fused.upscale(rgba)
    assert up.mode == "RGBA" and np.array_equal(np.asarray(up)[..., :3], out)


def test_frame_batches_equal_the_image_path():
    """upscale_frames (one fused call per batch) and start_frames (its deferred form, which the
    video path uses) give each frame exactly what upscale gives it alone."""
    fused = FusedSR.load(randomize_(RepSRNet.preset("M4C8", scale=2), seed=16).eval())
    frames = np.random.default_rng(16).integers(0, 256, (3, 13, 21, 3), dtype=np.uint8)
    batch = fused.upscale_frames(frames)
    assert batch.shape == (3, 26, 42, 3) and batch.dtype == np.uint8
    for frame, up in zip(frames, batch):
        assert np.array_equal(up, fused.upscale(frame))
    assert np.array_equal(fused.start_frames(frames).result(), batch)
    with pytest.warns(UserWarning, match="small next to this network's reach"):
        assert np.array_equal(fused.start_frames(frames, tile=8).result(), batch)  # tiled: bit-exact too
    for bad in (frames[0], frames.astype(np.float32), frames[..., :2], torch.from_numpy(frames)):
        with pytest.raises(ValueError, match=r"frames must be a uint8 numpy array \[N, H, W, 3\]"):
            fused.start_frames(bad)


def test_bad_inputs_have_clear_errors(tmp_path):
    fused = FusedSR.load(RepSRNet.preset("M4C8", scale=2).eval())
    with pytest.raises(ValueError, match="input has 4 channels, the model expects 3"):
        fused(torch.rand(1, 4, 8, 8))
    with pytest.raises(TypeError, match="float64.*x.to"):
        fused(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="4-D"):
        fused(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="is on meta but the model is on cpu"):
        fused(torch.empty(1, 3, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="tile must be a positive integer"):
        fused(torch.rand(1, 3, 8, 8), tile=0)
    assert fused(torch.rand(0, 3, 8, 8)).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match=r"shape \[H, W\], \[H, W, 1\], \[H, W, 3\] or \[H, W, 4\]"):
        fused.upscale(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        fused.upscale(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        fused.upscale(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        fused.upscale(tmp_path / "broken.png")
    with pytest.raises(ValueError, match="dtype torch.float16 is not supported on cpu"):
        FusedSR.load(RepSRNet.preset("M4C8", scale=2).eval(), dtype=torch.float16)
    with pytest.raises(TypeError, match="file path, a PlainSR or a RepSRNet"):
        FusedSR.load(42)


def test_op_argument_checks_name_the_tensor():
    w, b, s = random_net([3, 8, 12], 2, seed=16)
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(RuntimeError, match=r"`input` has 4 channels but weights\[0\] takes 3: `input` must be \[N, C, H, W\] with C = 3"):
        torch.ops.repsr_ext.fused_sr(torch.rand(1, 4, 6, 6), w, b, s, 2, True, False)
    with pytest.raises(RuntimeError, match=r"`image` has 6 channels but weights\[0\] takes 3: `image` must be \[N, H, W, C\]"):
        torch.ops.repsr_ext.fused_sr_u8(torch.zeros(1, 3, 6, 6, dtype=torch.uint8), w, b, s, 2, True)
    with pytest.raises(RuntimeError, match=r"weights\[1\] must have shape \[Cout, 8, 3, 3\], got \[12, 7, 3, 3\]"):
        torch.ops.repsr_ext.fused_sr(x, [w[0], w[1][:, :7]], b, s, 2, True, False)
    with pytest.raises(RuntimeError, match=r"biases\[1\] must have shape \[12\]"):
        torch.ops.repsr_ext.fused_sr(x, w, [b[0], b[1][:5]], s, 2, True, False)
    with pytest.raises(RuntimeError, match="neg_slopes` must have one tensor per activation"):
        torch.ops.repsr_ext.fused_sr(x, w, b, [], 2, True, False)
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.repsr_ext.fused_sr(x.double(), w, b, s, 2, True, False)
    with pytest.raises(RuntimeError, match="not a multiple of scale"):
        torch.ops.repsr_ext.fused_sr(x, w, b, s, 3, True, False)


def _argument_errors():
    """Calls the real op refuses, with the message it gives."""
    w, b, s = random_net([3, 8, 12], 2, seed=21)
    x = torch.rand(1, 3, 6, 6)
    return [
        ((torch.rand(1, 4, 6, 6), w, b, s, 2, True, False), r"`input` has 4 channels but weights\[0\] takes 3"),
        ((x, [w[0], w[1][:, :7]], b, s, 2, True, False), r"weights\[1\] must have shape \[Cout, 8, 3, 3\]"),
        ((x, w, [b[0], b[1][:5]], s, 2, True, False), r"biases\[1\] must have shape \[12\]"),
        ((x, w, b, [], 2, True, False), "`neg_slopes` must have one tensor per activation"),
        ((x, w, b, [s[0][:3]], 2, True, False), r"neg_slopes\[0\] must have shape \[8\]"),
        ((x.double(), w, b, s, 2, True, False), "must be .*float32"),
        ((x[0], w, b, s, 2, True, False), "must be 4-D"),
        ((x, w, b, s, 3, True, False), "not a multiple of scale"),
        ((x, w, b, s, 0, True, False), "`scale` must be >= 1"),
    ]


@pytest.mark.parametrize("case", range(len(_argument_errors())))
def test_fake_kernel_refuses_what_the_op_refuses(case):
    """Shape inference (torch.compile, FakeTensorMode) checks the arguments as the real op does,
    rather than inventing an output shape for a call that can never run."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args, match = _argument_errors()[case]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.repsr_ext.fused_sr(*args)
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(RuntimeError, match=match):
        torch.ops.repsr_ext.fused_sr(*args)


def test_fake_kernel_output_matches_the_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    w, b, s = random_net([3, 8, 12], 2, seed=22)
    x = torch.rand(2, 3, 5, 7)
    real = torch.ops.repsr_ext.fused_sr(x, w, b, s, 2, True, False)
    image = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    real_u8 = torch.ops.repsr_ext.fused_sr_u8(image, w, b, s, 2, True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.ops.repsr_ext.fused_sr(x, w, b, s, 2, True, False)
        fake_u8 = torch.ops.repsr_ext.fused_sr_u8(image, w, b, s, 2, True)
    assert (fake.shape, fake.dtype) == (real.shape, real.dtype)
    assert (fake_u8.shape, fake_u8.dtype) == (real_u8.shape, real_u8.dtype)


def test_meta_tensor_among_the_arguments_is_refused():
    """A meta tensor anywhere sends the call to the fake kernel; it must not hand back an
    uninitialised CPU tensor as if it were the result."""
    w, b, s = random_net([3, 8, 12], 2, seed=23)
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(RuntimeError, match=r"weights\[0\] is on meta but the input is on cpu"):
        torch.ops.repsr_ext.fused_sr(x, [w[0].to("meta"), w[1]], b, s, 2, True, False)
    with pytest.raises(RuntimeError, match=r"neg_slopes\[0\] is on meta"):
        torch.ops.repsr_ext.fused_sr(x, w, b, [s[0].to("meta")], 2, True, False)
    with pytest.raises(RuntimeError, match=r"biases\[1\] is on meta"):
        torch.ops.repsr_ext.fused_sr_u8(torch.zeros(1, 6, 6, 3, dtype=torch.uint8), w, [b[0], b[1].to("meta")], s, 2, True)


def test_no_silent_wrong_gradients():
    """The ops have no backward: a gradient through them is an error, never a silently missing
    term (a forward call on tensors that require grad still works)."""
    w, b, s = random_net([3, 8, 12], 2, seed=24)
    x = torch.rand(1, 3, 6, 6, requires_grad=True)
    y = torch.ops.repsr_ext.fused_sr(x, w, b, s, 2, True, False)
    assert torch.equal(y.detach(), torch.ops.repsr_ext.fused_sr(x.detach(), w, b, s, 2, True, False))
    with pytest.raises(RuntimeError, match="have no backward"):
        (y.sum() + x.sum()).backward()
    weight = w[0].clone().requires_grad_()
    y = torch.ops.repsr_ext.fused_sr(x.detach(), [weight, w[1]], b, s, 2, True, False)
    with pytest.raises(RuntimeError, match="have no backward"):
        y.sum().backward()
    with torch.no_grad():  # the usual inference call: no graph at all
        assert not torch.ops.repsr_ext.fused_sr(x, w, b, s, 2, True, False).requires_grad


def test_fusedsr_device_without_index_and_weights_are_a_snapshot():
    """FusedSR compares inputs with where its weights are (a device given without an index, like
    "cuda", means the current one, which tensors report with its index), and keeps its own copy
    of the weights: editing the PlainSR afterwards does not change it."""
    plain = PlainSR(*random_net([3, 8, 12], 2, seed=25)[:2], act="relu", scale=2)
    x = _input((1, 3, 6, 6), seed=25)
    fused = FusedSR(plain, device="cpu:0")
    assert fused.device == x.device
    before = fused(x)
    with torch.no_grad():
        plain.convs[0].weight.mul_(-1.0)
    assert torch.equal(fused(x), before)
    assert not torch.equal(FusedSR(plain)(x), before)


def test_fusedsr_tiled_empty_image():
    fused = FusedSR(PlainSR(*random_net([3, 8, 12], 2, seed=26)[:2], act="relu", scale=2))
    for shape in [(1, 3, 0, 20), (2, 3, 20, 0), (0, 3, 20, 20)]:
        out = fused(torch.rand(shape), tile=8)
        assert out.shape == (shape[0], 3, shape[2] * 2, shape[3] * 2)
    assert fused.upscale(np.zeros((0, 20, 3), np.uint8), tile=4).shape == (0, 40, 3)


def test_opcheck():
    net = random_net([3, 8, 8, 12], 2, seed=17)
    x = _input((2, 3, 7, 9), seed=17)
    w, b, s = net
    torch.library.opcheck(torch.ops.repsr_ext.fused_sr.default, (x, w, b, s, 2, True, False))
    image = torch.randint(0, 256, (1, 7, 9, 3), dtype=torch.uint8)
    torch.library.opcheck(torch.ops.repsr_ext.fused_sr_u8.default, (image, w, b, s, 2, True))


def test_torch_compile():
    fused = FusedSR.load(randomize_(RepSRNet.preset("M4C8", scale=2), seed=18).eval())
    x = _input((1, 3, 12, 10), seed=18)
    compiled = torch.compile(lambda t: fused(t) * 2.0, fullgraph=True)
    assert torch.allclose(compiled(x), fused(x) * 2.0)
