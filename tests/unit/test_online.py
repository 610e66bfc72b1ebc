"""labkit.decoding.online: continual modules give the sliding-window outputs, step by step, with less work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from labkit.decoding.online import (
    ContinualAttention,
    ContinualConv1d,
    continual_run,
    count_flops,
    sliding_window_recompute,
    time_per_step,
)

torch.set_num_threads(1)  # two cores shared with other jobs (conftest sets OMP_WAIT_POLICY=PASSIVE)

ATOL = 1e-5


# --------------------------------------------------------------------------------------------------------
# Continual convolution
# --------------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), steps=st.integers(1, 20), c_in=st.integers(1, 5), c_out=st.integers(1, 5),
       kernel=st.integers(1, 6), extra=st.integers(0, 6), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_continual_conv_equals_sliding_window(batch, steps, c_in, c_out, kernel, extra, bias, seed):
    torch.manual_seed(seed)
    conv = nn.Conv1d(c_in, c_out, kernel, bias=bias)
    module = ContinualConv1d.from_conv1d(conv)
    stream = torch.randn(batch, steps, c_in)
    with torch.no_grad():
        recomputed = sliding_window_recompute(module, stream, window=kernel + extra)
        continual = continual_run(module, stream)
        # the plain Conv1d over the stream padded with kernel - 1 zero steps: the same causal outputs
        reference = conv(F.pad(stream.transpose(1, 2), (kernel - 1, 0))).transpose(1, 2)
    assert continual.shape == (batch, steps, c_out)
    torch.testing.assert_close(continual, recomputed, atol=ATOL, rtol=0)
    torch.testing.assert_close(continual, reference, atol=ATOL, rtol=0)


def test_continual_conv_continues_a_stream_and_resets():
    torch.manual_seed(0)
    module = ContinualConv1d(3, 4, kernel_size=3)
    stream = torch.randn(2, 12, 3)
    with torch.no_grad():
        whole = continual_run(module, stream)
        continual_run(module, stream[:, :7])
        rest = torch.stack([module.step(stream[:, t]) for t in range(7, 12)], dim=1)
        torch.testing.assert_close(rest, whole[:, 7:], atol=ATOL, rtol=0)
        module.reset()
        torch.testing.assert_close(module.step(stream[:, 0]), whole[:, 0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("kwargs", [{"stride": 2}, {"padding": 1}, {"dilation": 2}, {"groups": 2}])
def test_from_conv1d_rejects_non_causal_settings(kwargs):
    with pytest.raises(ValueError, match="conv\\."):
        ContinualConv1d.from_conv1d(nn.Conv1d(4, 4, 3, **kwargs))


def test_continual_conv_rejects_bad_inputs():
    module = ContinualConv1d(3, 2, kernel_size=4)
    with pytest.raises(TypeError, match="conv"):
        ContinualConv1d.from_conv1d(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="kernel_size"):
        ContinualConv1d(3, 2, kernel_size=0)
    with pytest.raises(ValueError, match="x must have shape"):
        module.step(torch.randn(2, 5))
    with pytest.raises(TypeError, match="x must be"):
        module.step(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="window"):
        sliding_window_recompute(module, torch.randn(1, 6, 3), window=3)  # shorter than the kernel
    with pytest.raises(ValueError, match="stream"):
        continual_run(module, torch.randn(1, 6, 4))
    with pytest.raises(ValueError, match="stream"):
        continual_run(module, torch.randn(6, 3))
    with pytest.raises(TypeError, match="module"):
        continual_run(nn.Conv1d(3, 2, 4), torch.randn(1, 6, 3))


# --------------------------------------------------------------------------------------------------------
# Continual single-output attention
# --------------------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), steps=st.integers(1, 16), heads=st.sampled_from([1, 2, 4]),
       head_dim=st.integers(1, 4), window=st.integers(1, 9), norm_first=st.booleans(),
       activation=st.sampled_from(["relu", "gelu"]), seed=st.integers(0, 2**16))
def test_continual_attention_equals_sliding_window(batch, steps, heads, head_dim, window, norm_first, activation,
                                                   seed):
    torch.manual_seed(seed)
    d = heads * head_dim
    module = ContinualAttention(d, heads, window, d_ff=2 * d, norm_first=norm_first, activation=activation)
    stream = torch.randn(batch, steps, d)
    with torch.no_grad():
        recomputed = sliding_window_recompute(module, stream, window)
        continual = continual_run(module, stream)
    assert continual.shape == (batch, steps, d)
    torch.testing.assert_close(continual, recomputed, atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_continual_attention_equals_torch_encoder_layer(norm_first, activation):
    torch.manual_seed(1)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first).eval()
    window, steps = 6, 15
    module = ContinualAttention.from_encoder_layer(layer, window)
    stream = torch.randn(2, steps, 16)
    padded = F.pad(stream, (0, 0, window - 1, 0))
    with torch.no_grad():
        reference = torch.stack([layer(padded[:, t:t + window])[:, -1] for t in range(steps)], dim=1)
        continual = continual_run(module, stream)
    torch.testing.assert_close(continual, reference, atol=ATOL, rtol=0)


def test_continual_attention_continues_a_stream():
    torch.manual_seed(2)
    module = ContinualAttention(8, 2, window=4, d_ff=16)
    stream = torch.randn(1, 11, 8)
    with torch.no_grad():
        whole = continual_run(module, stream)
        continual_run(module, stream[:, :5])
        rest = torch.stack([module.step(stream[:, t]) for t in range(5, 11)], dim=1)
    torch.testing.assert_close(rest, whole[:, 5:], atol=ATOL, rtol=0)


def test_continual_attention_rejects_bad_inputs():
    module = ContinualAttention(8, 2, window=4, d_ff=16)
    with pytest.raises(ValueError, match="n_heads"):
        ContinualAttention(8, 3, window=4, d_ff=16)
    with pytest.raises(ValueError, match="window"):
        ContinualAttention(8, 2, window=0, d_ff=16)
    with pytest.raises(ValueError, match="activation"):
        ContinualAttention(8, 2, window=4, d_ff=16, activation="tanh")
    with pytest.raises(ValueError, match="window must equal"):
        sliding_window_recompute(module, torch.randn(1, 6, 8), window=5)
    with pytest.raises(ValueError, match="x must have shape"):
        module.step(torch.randn(1, 7))
    with pytest.raises(ValueError, match="window must have shape"):
        module.forward_window(torch.randn(1, 3, 8))
    with pytest.raises(TypeError, match="layer"):
        ContinualAttention.from_encoder_layer(nn.Linear(8, 8), 4)
    with pytest.raises(ValueError, match="stream"):
        continual_run(module, torch.randn(1, 0, 8))


# --------------------------------------------------------------------------------------------------------
# The cost of a step
# --------------------------------------------------------------------------------------------------------


def test_continual_step_does_a_fraction_of_the_work():
    for window in (16, 64):
        attention = ContinualAttention(32, 4, window, d_ff=64)
        recompute, continual = count_flops(attention, window, "recompute"), count_flops(attention, window, "continual")
        assert continual > 0 and recompute / continual > window / 2  # the saving grows with the window
    conv = ContinualConv1d(8, 8, kernel_size=3)
    assert count_flops(conv, 64, "continual") == 2 * 8 * 8 * 3  # one output: k·C_in·C_out multiply-adds
    assert count_flops(conv, 64, "recompute") == 62 * 2 * 8 * 8 * 3  # every output of the window
    assert time_per_step(attention, 64, "continual", repeats=3) > 0
    with pytest.raises(ValueError, match="mode"):
        count_flops(conv, 8, "lazy")
    with pytest.raises(ValueError, match="window"):
        count_flops(attention, 8)
