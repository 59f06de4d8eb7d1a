"""Sliding-window inference: exactness against whole-volume prediction, padding, TTA, callbacks, OOM policy."""
import itertools

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.inference import (
    Cancelled, DeviceError, compute_window_starts, gaussian_importance_map, resolve_device,
    run_with_oom_fallback, sliding_window_inference)

CPU = torch.device("cpu")


def pointwise_net(in_ch: int = 2, classes: int = 3, seed: int = 0) -> torch.nn.Module:
    """1x1x1 conv with fixed weights: output at a voxel depends only on that voxel (context-free)."""
    torch.manual_seed(seed)
    net = torch.nn.Conv3d(in_ch, classes, kernel_size=1)
    with torch.no_grad():
        net.weight.copy_(torch.randn_like(net.weight))
        net.bias.copy_(torch.tensor([0.3, -0.2, 0.1][:classes]))
    return net.eval()


def conv3_net(in_ch: int = 1, classes: int = 2, seed: int = 1) -> torch.nn.Module:
    """3x3x3 conv (zero padding) with random, hence asymmetric, weights: needs context, not flip-equivariant."""
    torch.manual_seed(seed)
    net = torch.nn.Conv3d(in_ch, classes, kernel_size=3, padding=1)
    with torch.no_grad():
        net.weight.copy_(torch.randn_like(net.weight))
    return net.eval()


def direct(net: torch.nn.Module, vol: np.ndarray, softmax: bool = True) -> np.ndarray:
    with torch.no_grad():
        out = net(torch.from_numpy(vol)[None].float())[0]
    return (torch.softmax(out, 0) if softmax else out).numpy()


def volume(shape, channels=None, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    full = shape if channels is None else (channels,) + tuple(shape)
    return rng.normal(size=full).astype(np.float32)


# ------------------------------------------------------------------------------------------- geometry

def test_window_starts_cover_axis_and_end_aligned():
    assert compute_window_starts(20, 12, 0.5) == [0, 6, 8]
    assert compute_window_starts(20, 10, 0.0) == [0, 10]
    assert compute_window_starts(21, 10, 0.0) == [0, 10, 11]
    assert compute_window_starts(12, 12, 0.5) == [0]
    assert compute_window_starts(5, 2, 0.9) == [0, 1, 2, 3]  # step rounds to at least 1
    with pytest.raises(ValueError):
        compute_window_starts(5, 8, 0.5)


def test_gaussian_map_shape_peak_symmetry_positive():
    for size in [(9, 9, 9), (8, 12, 7)]:
        g = gaussian_importance_map(size)
        assert g.shape == size and g.dtype == np.float32
        assert g.max() == pytest.approx(1.0)
        assert g.min() > 0
        for axis in range(3):
            np.testing.assert_allclose(g, np.flip(g, axis), rtol=0, atol=1e-7)
        assert g.min() < 0.01 * g.max()  # it really is peaked, not flat
    g = gaussian_importance_map((9, 9, 9))
    assert g[4, 4, 4] == 1.0 and np.argmax(g) == np.ravel_multi_index((4, 4, 4), g.shape)
    g = gaussian_importance_map(8)
    assert g[3:5, 3:5, 3:5].min() == pytest.approx(1.0) and g[0, 0, 0] < g[1, 1, 1] < g[2, 2, 2]
    # A tiny sigma would underflow to 0 at the corners without the floor.
    assert gaussian_importance_map((16, 16, 16), sigma_scale=0.02).min() > 0


# ---------------------------------------------------------------------------------------- exactness

def test_pointwise_network_matches_whole_volume_prediction():
    net = pointwise_net()
    vol = volume((13, 17, 11), channels=2)
    expected = direct(net, vol)
    expected_logits = direct(net, vol, softmax=False)
    for patch, overlap, bs, gauss in itertools.product([(8, 8, 8), (5, 9, 7), 6], [0.0, 0.25, 0.5], [1, 3],
                                                       [True, False]):
        got = sliding_window_inference(vol, net, patch, overlap=overlap, batch_size=bs, device="cpu",
                                       gaussian=gauss)
        assert got.shape == (3, 13, 17, 11) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{patch} {overlap} {bs} {gauss}")
    logits = sliding_window_inference(torch.from_numpy(vol), net, 7, overlap=0.5, device="cpu",
                                      return_probabilities=False)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-5)
    assert not np.allclose(logits.sum(0), 1.0)  # logits really are not probabilities


def _clean_mask(size: int, patch: int, overlap: float) -> np.ndarray:
    """Positions where no covering window has a cut face (a face that is not the volume face)."""
    clean = np.ones(size, bool)
    for s in compute_window_starts(size, patch, overlap):
        if s > 0:
            clean[s] = False
        if s + patch < size:
            clean[s + patch - 1] = False
    return clean


def test_context_network_is_exact_away_from_window_cuts():
    """A 3x3x3 conv sees zero padding instead of real neighbours only on the faces of a window that cut
    through the volume. Every voxel whose covering windows all hold it off such faces must match the
    whole-volume output exactly. Elsewhere the mean error with overlap 0.5 and Gaussian weights (low
    weight at window borders, where the wrong predictions are) must be several times smaller than with
    uniform weights or with no overlap (24 = 2 x 12: the windows just touch)."""
    net = conv3_net()
    vol = volume((24, 24, 24), seed=3)
    expected = direct(net, vol[None])
    errors = {}
    for overlap, gauss in itertools.product([0.0, 0.5], [True, False]):
        got = sliding_window_inference(vol, net, 12, overlap=overlap, batch_size=4, device="cpu", gaussian=gauss)
        m = _clean_mask(24, 12, overlap)
        mask = m[:, None, None] & m[None, :, None] & m[None, None, :]
        assert 0.3 < mask.mean() < 1.0
        np.testing.assert_allclose(got[:, mask], expected[:, mask], atol=1e-5)
        errors[overlap, gauss] = np.abs(got - expected).mean()
        assert errors[overlap, gauss] > 1e-4  # the cuts really do change the result
    # Measured: 0.004 (overlap 0.5, Gaussian) vs 0.041 (uniform) and 0.050 (no overlap).
    assert errors[0.5, True] < 0.25 * errors[0.5, False]
    assert errors[0.5, True] < 0.25 * errors[0.0, True]


def test_volume_smaller_than_patch_is_padded_and_cropped_back():
    net = pointwise_net(in_ch=1, classes=2)
    vol = volume((5, 20, 3), seed=1)
    got = sliding_window_inference(vol, net, (8, 8, 8), overlap=0.25, device="cpu")
    assert got.shape == (2, 5, 20, 3)
    np.testing.assert_allclose(got, direct(net, vol[None]), atol=1e-5)
    # With context, the pad value reaches the border voxels: the volume minimum by default, else pad_value.
    cnet = conv3_net()
    small = volume((4, 4, 4), seed=2) + 5.0
    a = sliding_window_inference(small, cnet, 8, device="cpu")
    b = sliding_window_inference(small, cnet, 8, device="cpu", pad_value=float(small.min()))
    c = sliding_window_inference(small, cnet, 8, device="cpu", pad_value=0.0)
    assert a.shape == (2, 4, 4, 4)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(c, direct(cnet, small[None]), atol=1e-5)  # zero pad == conv's own padding
    assert not np.allclose(a, c, atol=1e-3)


# ---------------------------------------------------------------------------------------------- TTA

class Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls, self.batches = inner, 0, []

    def forward(self, x):
        self.calls += 1
        self.batches.append(x.shape[0])
        return self.inner(x)


def test_mirroring_is_a_no_op_for_an_equivariant_network():
    net = Counting(pointwise_net())
    vol = volume((9, 10, 11), channels=2)
    plain = sliding_window_inference(vol, net, 6, overlap=0.5, batch_size=64, device="cpu")
    assert net.calls == 1
    net.calls = 0
    tta = sliding_window_inference(vol, net, 6, overlap=0.5, batch_size=64, device="cpu", mirror_axes=(0, 1, 2))
    assert net.calls == 8  # one batch, every flip of three axes
    np.testing.assert_allclose(tta, plain, atol=1e-5)


def test_mirroring_averages_flipped_logits_for_an_asymmetric_network():
    net = conv3_net()
    vol = volume((8, 9, 10), seed=4)
    t = torch.from_numpy(vol)[None, None]
    with torch.no_grad():
        for axis in range(3):
            d = axis + 2
            mean = (net(t) + net(t.flip(d)).flip(d)) / 2
            expected = torch.softmax(mean[0], 0).numpy()
            got = sliding_window_inference(vol, net, (8, 9, 10), device="cpu", mirror_axes=(axis,))
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert not np.allclose(got, direct(net, vol[None]), atol=1e-3)
    with pytest.raises(ValueError):
        sliding_window_inference(vol, net, 8, device="cpu", mirror_axes=(3,))


# ------------------------------------------------------------------------------------------ callbacks

def test_progress_increases_to_one():
    seen = []
    vol = volume((10, 10, 10), seed=5)
    sliding_window_inference(vol, pointwise_net(1, 2), 6, overlap=0.5, batch_size=3, device="cpu",
                             progress=seen.append)
    n_windows = len(compute_window_starts(10, 6, 0.5)) ** 3
    assert len(seen) == -(-n_windows // 3)
    assert all(b > a for a, b in zip(seen, seen[1:]))
    assert seen[0] > 0 and seen[-1] == 1.0


def test_cancellation_raises_promptly():
    net = Counting(pointwise_net(1, 2))
    checks = []

    def cancel():
        checks.append(1)
        return len(checks) > 2

    with pytest.raises(Cancelled):
        sliding_window_inference(volume((16, 16, 16)), net, 6, overlap=0.5, batch_size=1, device="cpu",
                                 should_cancel=cancel)
    assert net.calls == 2  # stopped before the third batch of 64 windows


# ------------------------------------------------------------------------------------------- OOM policy

class OomAboveBatchOne(Counting):
    def forward(self, x):
        if x.shape[0] > 1:
            self.batches.append(-x.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_oom_halves_the_batch_and_result_is_unchanged():
    net = OomAboveBatchOne(pointwise_net())
    vol = volume((11, 12, 13), channels=2)
    messages = []
    got = sliding_window_inference(vol, net, 6, overlap=0.5, batch_size=4, device="cpu", log=messages.append)
    np.testing.assert_allclose(got, direct(net.inner, vol), atol=1e-5)
    assert net.batches[:2] == [-4, -2] and set(net.batches[2:]) == {1}  # 4 -> 2 -> 1, then stays at 1
    assert len(messages) == 2
    assert "retrying with batch size 2" in messages[0] and "retrying with batch size 1" in messages[1]


def test_fallback_from_cuda_to_cpu_after_batch_one():
    calls, messages = [], []

    def run_batch(chunk, dev):
        calls.append((dev.type, chunk.shape[0]))
        if dev.type == "cuda":
            raise RuntimeError("CUDA error: out of memory")
        return chunk * 2

    patches = torch.arange(5, dtype=torch.float32).reshape(5, 1)
    outs, dev, bs = run_with_oom_fallback(run_batch, patches, torch.device("cuda"), 4, messages.append)
    assert dev == CPU and bs == 1
    assert calls[:4] == [("cuda", 4), ("cuda", 2), ("cuda", 1), ("cpu", 1)]
    assert torch.equal(torch.cat(outs), patches * 2)
    assert "falling back to the CPU" in messages[-1] and len(messages) == 3


def test_oom_policy_propagates_what_it_cannot_handle():
    def other_error(chunk, dev):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_with_oom_fallback(other_error, torch.zeros(2, 1), CPU, 2, lambda m: None)

    def always_oom(chunk, dev):
        raise torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(MemoryError):
        run_with_oom_fallback(always_oom, torch.zeros(2, 1), CPU, 2, lambda m: None)


# ---------------------------------------------------------------------------------------------- device

def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    assert torch.get_num_threads() >= 1
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == CPU
        for spec in ("cuda", "cuda:0"):
            with pytest.raises(DeviceError, match="--device cpu"):
                resolve_device(spec)
    for bad in ("gpu", "cuda:x", "cuda:", ""):
        with pytest.raises(DeviceError, match="not valid"):
            resolve_device(bad)
    assert issubclass(DeviceError, ValueError)


def test_thread_override(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("KIDNEYTUMORSEG_NUM_THREADS", "1")
        resolve_device("cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("KIDNEYTUMORSEG_NUM_THREADS", "many")
        with pytest.raises(DeviceError):
            resolve_device("cpu")
    finally:
        torch.set_num_threads(before)


def test_integer_input_and_training_mode_restored():
    net = pointwise_net(1, 2).train()
    vol = (np.arange(7 * 8 * 9).reshape(7, 8, 9) % 11 - 5).astype(np.int16)
    got = sliding_window_inference(vol, net, 5, device=CPU)
    assert net.training  # put back the way the caller left it
    np.testing.assert_allclose(got, direct(net.eval(), vol[None].astype(np.float32)), atol=1e-5)
