"""The fused op on CUDA against an independent float64 F.conv2d chain (helpers.reference_chain).

Skipped unless a GPU is visible and the extension was built with its CUDA backend.

Tolerances:
  float32     relative L2 error <= 1e-5 against float64 (the CPU bound: float32 accumulation of up
              to 16 x 64 x 9 products per layer).
  fp16/bf16   relative L2 error <= 2 x that of PyTorch's own float16/bfloat16 F.conv2d chain on the
              same input and weights (computed here), or <= a floor of two units of roundoff
              (1e-3 / 8e-3) where PyTorch happens to be very close.
  uint8       (float16 compute) at most one level from round(clamp(ref) * 255) anywhere, and no
              more mismatching pixels than 2 x PyTorch's float16 chain has (+1% of pixels).
"""
import random

import pytest
import torch
import torch.nn.functional as F

from helpers import reference_chain, rel_err
from repsr_ext import ops

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.has_backend("cuda")),
    reason="needs a CUDA device and the extension's CUDA backend",
)

DEV = "cuda"
ACT_KINDS = ["identity", "relu", "lrelu", "prelu"]
LOW = [torch.float16, torch.bfloat16]
FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def random_net(widths, seed, acts=None, device=DEV):
    """float32 weights/biases/slopes for a chain with the given layer boundary widths
    (widths[-1] = out * scale^2). Activations differ per layer when `acts` is None."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    weights, biases, slopes = [], [], []
    for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        weights.append(torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5 * 1.2)
        biases.append(torch.randn(cout, generator=g) * 0.1)
        if i < len(widths) - 2:
            kind = acts or rng.choice(ACT_KINDS)
            slopes.append({
                "identity": torch.ones(cout),
                "relu": torch.zeros(cout),
                "lrelu": torch.full((cout,), 0.1),
                "prelu": torch.rand(cout, generator=g) * 0.5 - 0.1,
            }[kind])
    move = lambda ts: [t.to(device) for t in ts]  # noqa: E731
    return move(weights), move(biases), move(slopes)


def rand_input(shape, seed, dtype=torch.float32):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    return x.to(device=DEV, dtype=dtype)


def run_op(x, net, scale, residual=True, clamp=False):
    w, b, s = net
    return torch.ops.repsr_ext.fused_sr(x, w, b, s, scale, residual, clamp)


def torch_chain(x, net, scale, residual, clamp, dtype):
    """PyTorch's own chain in `dtype` (cuDNN convs, float32 accumulation): the accuracy bar."""
    w, b, s = net
    y = x.to(dtype)
    for i, (wi, bi) in enumerate(zip(w, b)):
        y = F.conv2d(y, wi.to(dtype), bi.to(dtype), padding=1)
        if i < len(w) - 1:
            slope = s[i].to(dtype).view(1, -1, 1, 1)
            y = torch.where(y >= 0, y, slope * y)
    y = F.pixel_shuffle(y, scale)
    if residual:
        y = y + x.to(dtype).repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return y.clamp(0, 1) if clamp else y


def check(x, net, scale, residual=True, clamp=False):
    out = run_op(x, net, scale, residual, clamp)
    ref = reference_chain(x, *net, scale=scale, residual=residual, clamp=clamp)
    assert out.shape == ref.shape and out.dtype == x.dtype and out.is_contiguous()
    err = rel_err(out, ref)
    if x.dtype == torch.float32:
        assert err <= 1e-5, f"relative error {err:.2e}"
    else:
        bar = rel_err(torch_chain(x, net, scale, residual, clamp, x.dtype), ref)
        assert err <= max(2 * bar, FLOOR[x.dtype]), f"{x.dtype}: error {err:.2e}, PyTorch's {bar:.2e}"
    return out


ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("act", ACT_KINDS)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_every_activation_and_scale(dtype, act, scale):
    net = random_net([3, 16, 16, 16, 3 * scale * scale], seed=scale, acts=act)
    check(rand_input((2, 3, 13, 11), seed=scale, dtype=dtype), net, scale)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("width", [1, 4, 8, 13, 16, 24, 32, 48, 64])
def test_channel_counts(dtype, width):
    net = random_net([3, width, width, 12], seed=width)
    check(rand_input((1, 3, 19, 23), seed=width, dtype=dtype), net, 2)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("width", [72, 96, 128])
def test_wide_layers(dtype, width):
    """More than 64 channels: several 64-channel warp units per layer (padded weights)."""
    net = random_net([3, width, 27], seed=width)
    check(rand_input((1, 3, 17, 15), seed=width, dtype=dtype), net, 3)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("num_layers", [1, 2, 3, 5, 8, 16])
def test_depths(dtype, num_layers):
    widths = [3] + [8] * (num_layers - 1) + [27]
    net = random_net(widths, seed=num_layers)
    check(rand_input((2, 3, 10, 9), seed=num_layers, dtype=dtype), net, 3)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (7, 3), (37, 71), (64, 64), (97, 130), (200, 333)])
def test_image_sizes(dtype, size):
    net = random_net([3, 16, 16, 16, 16, 48], seed=sum(size))
    check(rand_input((1, 3, *size), seed=sum(size), dtype=dtype), net, 4)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_segment_split_deep_wide(dtype):
    """16 layers x 64 channels cannot stay on chip: the planner splits the chain into segments
    that exchange boundary maps through the workspace."""
    net = random_net([3] + [64] * 15 + [48], seed=16)
    check(rand_input((2, 3, 45, 61), seed=16, dtype=dtype), net, 4)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_random_networks_mixed_widths(dtype):
    rng = random.Random(42)
    for trial in range(12):
        num_layers = rng.randint(1, 7)
        scale = rng.randint(1, 4)
        cin = rng.choice([1, 3, 4])
        widths = [cin] + [rng.choice([1, 4, 8, 13, 16, 24, 32, 48, 64]) for _ in range(num_layers - 1)]
        widths.append(cin * scale * scale)
        h, w = rng.randint(1, 60), rng.randint(1, 60)
        net = random_net(widths, seed=trial)
        x = rand_input((rng.randint(1, 3), cin, h, w), seed=trial, dtype=dtype)
        check(x, net, scale, clamp=rng.random() < 0.5)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_no_residual_and_clamp(dtype):
    net = random_net([4, 8, 8, 2 * 9], seed=5)
    check(rand_input((2, 4, 9, 8), seed=5, dtype=dtype), net, 3, residual=False)
    net = random_net([3, 8, 8, 12], seed=6)
    x = (rand_input((1, 3, 16, 16), seed=6) * 3 - 1).to(dtype)
    out = check(x, net, 2, clamp=True)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "expanded_batch"])
def test_input_layouts(dtype, layout):
    net = random_net([3, 16, 16, 12], seed=7)
    base = rand_input((3, 3, 20, 24), seed=7, dtype=dtype)
    x = {
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "transposed": base.transpose(2, 3).contiguous().transpose(2, 3),
        "sliced": rand_input((3, 5, 41, 50), seed=8, dtype=dtype)[:, 1:4, ::2, 1::2],
        "expanded_batch": base[:1].expand(3, -1, -1, -1),
    }[layout]
    assert not x.is_contiguous()
    out = run_op(x, net, 2)
    assert torch.equal(out, run_op(x.contiguous(), net, 2))
    check(x, net, 2)


def test_empty_batch_launches_nothing():
    net = random_net([3, 8, 12], seed=9)
    for dtype in ALL_DTYPES:
        out = run_op(torch.rand(0, 3, 5, 5, device=DEV, dtype=dtype), net, 2)
        assert out.shape == (0, 3, 10, 10) and out.dtype == dtype
    w, b, s = net
    out = torch.ops.repsr_ext.fused_sr_u8(torch.zeros(0, 5, 5, 3, dtype=torch.uint8, device=DEV), w, b, s, 2, True)
    assert out.shape == (0, 10, 10, 3)


def test_deterministic():
    net = random_net([3, 32, 32, 32, 48], seed=11)
    for dtype in ALL_DTYPES:
        x = rand_input((2, 3, 33, 47), seed=11, dtype=dtype)
        assert torch.equal(run_op(x, net, 4), run_op(x, net, 4))


def _u8_expected(image, net, scale, residual=True):
    x = image.permute(0, 3, 1, 2).double() / 255
    ref = reference_chain(x, *net, scale=scale, residual=residual, clamp=True) * 255
    return torch.round(ref).permute(0, 2, 3, 1)


@pytest.mark.parametrize("widths,scale", [([3, 16, 16, 16, 48], 4), ([3, 32, 32, 32, 32, 12], 2),
                                          ([3] + [64] * 9 + [27], 3), ([3, 8, 3], 1)])
def test_uint8_path(widths, scale):
    net = random_net(widths, seed=10)
    g = torch.Generator().manual_seed(10)
    image = torch.randint(0, 256, (2, 23, 17, 3), generator=g, dtype=torch.uint8).to(DEV)
    w, b, s = net
    out = torch.ops.repsr_ext.fused_sr_u8(image, w, b, s, scale, True)
    assert out.shape == (2, 23 * scale, 17 * scale, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    expected = _u8_expected(image, net, scale)
    diff = (out.double() - expected).abs()
    assert diff.max() <= 1
    x = image.permute(0, 3, 1, 2).float() / 255
    theirs = torch.round(torch_chain(x, net, scale, True, True, torch.float16).double() * 255).permute(0, 2, 3, 1)
    their_mismatch = (theirs != expected).double().mean().item()
    our_mismatch = (diff > 0).double().mean().item()
    assert our_mismatch <= 2 * their_mismatch + 0.01, f"{our_mismatch:.4f} vs PyTorch fp16 {their_mismatch:.4f}"


def test_uint8_strided_image():
    """A non-contiguous HWC view (every other column of a wider image) reads correctly."""
    net = random_net([3, 16, 16, 12], seed=12)
    g = torch.Generator().manual_seed(12)
    wide = torch.randint(0, 256, (1, 20, 40, 3), generator=g, dtype=torch.uint8).to(DEV)
    view = wide[:, :, ::2]
    w, b, s = net
    out = torch.ops.repsr_ext.fused_sr_u8(view, w, b, s, 2, True)
    assert torch.equal(out, torch.ops.repsr_ext.fused_sr_u8(view.contiguous(), w, b, s, 2, True))


def test_non_default_stream():
    """The op runs on the current stream: its input is produced on a side stream after a long
    sleep, so a launch on any other stream would read the input before it is written."""
    net = random_net([3, 16, 16, 48], seed=13)
    x = rand_input((1, 3, 64, 80), seed=13)
    expected = run_op(x, net, 4)
    side = torch.cuda.Stream()
    staged = torch.zeros_like(x)
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time
        staged.copy_(x)
        out = run_op(staged, net, 4)
    side.synchronize()
    assert torch.equal(out, expected)


def test_start_frames_overlapped_batches_equal_the_synchronous_path():
    """FusedSR.start_frames (the video path): uploads and downloads on their own streams, several
    batches queued before any result is taken, behind a busy compute stream; every batch must equal
    the synchronous upscale_frames of the same frames, and the pinned results must stay intact
    while later batches run."""
    import numpy as np

    from helpers import randomize_
    from repsr_ext import FusedSR, RepSRNet

    net = randomize_(RepSRNet.preset("M4C16", scale=4), seed=21, scale=0.05).eval().reparameterize()
    fused = FusedSR(net, device=DEV, dtype=torch.float16)
    rng = np.random.default_rng(21)
    batches = [rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8) for _ in range(4)]
    expected = [fused.upscale_frames(b) for b in batches]
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # the compute stream busy: the copies must wait for it, not race
    jobs = [fused.start_frames(b) for b in batches]
    results = [job.result() for job in jobs]
    for got, want in zip(results, expected):
        assert got.shape == (3, 148, 212, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    more = [fused.start_frames(b) for b in batches]  # the host allocator may recycle blocks now
    for job, want in zip(more, expected):
        np.testing.assert_array_equal(job.result(), want)
    for got, want in zip(results, expected):  # the first results are still the user's
        np.testing.assert_array_equal(got, want)


def test_other_device_index_guard():
    """With several GPUs, an input on cuda:1 runs on cuda:1 while cuda:0 is current."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    net = random_net([3, 8, 12], seed=14, device="cuda:1")
    x = rand_input((1, 3, 9, 9), seed=14).to("cuda:1")
    out = run_op(x, net, 2)
    assert out.device == x.device
    assert rel_err(out, reference_chain(x, *net, scale=2)) <= 1e-5


def test_errors():
    net = random_net([3, 8, 12], seed=15)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        run_op(torch.rand(1, 3, 6, 6, device=DEV, dtype=torch.float64), net, 2)
    cpu_net = random_net([3, 8, 12], seed=15, device="cpu")
    with pytest.raises(RuntimeError, match=r"weights\[0\] is on cpu"):
        run_op(torch.rand(1, 3, 6, 6, device=DEV), cpu_net, 2)


def _crop_check(x, out, net, scale, y0, y1, x0, x1):
    """Compares out's region for LR rows [y0, y1) x cols [x0, x1) against the float64 reference
    of a crop with a halo of num_layers pixels (exact: outside the halo the crop's own zero
    padding cannot reach the compared region)."""
    halo = len(net[0])
    n, _, h, w = x.shape
    cy0, cy1, cx0, cx1 = max(y0 - halo, 0), min(y1 + halo, h), max(x0 - halo, 0), min(x1 + halo, w)
    crop = x[:, :, cy0:cy1, cx0:cx1]
    ref = reference_chain(crop, *net, scale=scale)
    ref = ref[:, :, (y0 - cy0) * scale:(y1 - cy0) * scale, (x0 - cx0) * scale:(x1 - cx0) * scale]
    got = out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale]
    return rel_err(got, ref)


def _free_gib():
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


@pytest.mark.slow
def test_8k_output_float32():
    """1 x 3 x 2160 x 3840 at x4: a 1.6 GB float32 output (8640 x 15360)."""
    if _free_gib() < 10:
        pytest.skip("needs 10 GiB of free GPU memory")
    net = random_net([3, 8, 8, 48], seed=17)
    x = rand_input((1, 3, 2160, 3840), seed=17)
    out = run_op(x, net, 4)
    assert out.shape == (1, 3, 8640, 15360)
    for y0, x0 in [(0, 0), (2160 - 24, 3840 - 40), (1000, 2000), (2160 - 5, 0), (0, 3840 - 5)]:
        assert _crop_check(x, out, net, 4, y0, min(y0 + 24, 2160), x0, min(x0 + 40, 3840)) <= 1e-5
    del out
    torch.cuda.empty_cache()


@pytest.mark.slow
def test_uint8_output_beyond_2_31_elements():
    """2 x 4320 x 7680 uint8 at x4: a 3.2 GB output whose second image starts past 2^31
    elements, so 32-bit offsets would write into the first image."""
    if _free_gib() < 10:
        pytest.skip("needs 10 GiB of free GPU memory")
    net = random_net([3, 8, 48], seed=18)
    g = torch.Generator().manual_seed(18)
    image = torch.randint(0, 256, (2, 4320, 7680, 3), generator=g, dtype=torch.uint8).to(DEV)
    w, b, s = net
    out = torch.ops.repsr_ext.fused_sr_u8(image, w, b, s, 4, True)
    assert out.shape == (2, 17280, 30720, 3)
    assert out.numel() > 2**31
    for n, y0, x0 in [(1, 4320 - 16, 7680 - 16), (0, 4320 - 16, 7680 - 16), (1, 0, 0), (1, 2000, 3000)]:
        sub = image[n:n + 1, max(y0 - 2, 0):y0 + 18, max(x0 - 2, 0):x0 + 18]
        expected = _u8_expected(sub, net, 4)
        oy, ox = (y0 - max(y0 - 2, 0)) * 4, (x0 - max(x0 - 2, 0)) * 4
        expected = expected[:, oy:oy + 64, ox:ox + 64]
        got = out[n:n + 1, y0 * 4:y0 * 4 + 64, x0 * 4:x0 * 4 + 64]
        assert got.shape == expected.shape
        assert (got.double() - expected).abs().max() <= 1, f"image {n} at ({y0}, {x0})"
    del out, image
    torch.cuda.empty_cache()


def test_opcheck():
    net = random_net([3, 8, 8, 12], seed=19)
    w, b, s = net
    for dtype in ALL_DTYPES:
        x = rand_input((2, 3, 7, 9), seed=19, dtype=dtype)
        torch.library.opcheck(torch.ops.repsr_ext.fused_sr.default, (x, w, b, s, 2, True, False))
    image = torch.randint(0, 256, (1, 7, 9, 3), dtype=torch.uint8, device=DEV)
    torch.library.opcheck(torch.ops.repsr_ext.fused_sr_u8.default, (image, w, b, s, 2, True))
