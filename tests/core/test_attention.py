"""Every CPU attention backend against the eager reference, and the backend dispatch rules."""

import pytest
import torch

from mmfuse.core.attention import AttentionBackendError, attention
from mmfuse.core.packing import cu_seqlens_from_lengths

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

WITH_BACKWARD = ["sdpa", "sdpa_varlen"]  # flex has no backward on CPU (torch 2.11)
PADDED_BACKENDS = ["sdpa", "flex"]
PACKED_BACKENDS = ["sdpa", "sdpa_varlen", "flex"]


def _qkv(q_shape, kv_shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(q_shape, generator=generator, dtype=torch.float64)
    k = torch.randn(kv_shape, generator=generator, dtype=torch.float64)
    v = torch.randn(kv_shape, generator=generator, dtype=torch.float64)
    return q, k, v


def _assert_matches_eager(backend, q, k, v, **kwargs):
    """Forward (and backward where the backend has one) equal to eager."""
    needs_grad = backend in WITH_BACKWARD
    results = []
    for name in ("eager", backend):
        inputs = [t.clone().requires_grad_(needs_grad) for t in (q, k, v)]
        with torch.set_grad_enabled(needs_grad):
            out = attention(*inputs, backend=name, **kwargs)
            grads = torch.autograd.grad((out * out).sum(), inputs) if needs_grad else ()
        results.append((out, grads))
    (ref, ref_grads), (out, grads) = results
    assert out.shape == q.shape[:-1] + v.shape[-1:]
    torch.testing.assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad)


PADDED_CASES = {
    "self": dict(q=(2, 4, 7, 8), kv=(2, 4, 7, 8)),
    "causal": dict(q=(2, 4, 7, 8), kv=(2, 4, 7, 8), causal=True),
    "cross": dict(q=(2, 4, 5, 8), kv=(2, 4, 9, 8)),
    "causal_kv_cache": dict(q=(2, 4, 3, 8), kv=(2, 4, 9, 8), causal=True),
    "gqa_causal": dict(q=(2, 6, 7, 8), kv=(2, 2, 7, 8), causal=True),
    "length_1": dict(q=(3, 2, 1, 8), kv=(3, 2, 1, 8), causal=True),
    "scale": dict(q=(1, 2, 4, 8), kv=(1, 2, 6, 8), scale=0.3),
}


@pytest.mark.parametrize("case", PADDED_CASES)
@pytest.mark.parametrize("backend", PADDED_BACKENDS)
def test_padded_backends_match_eager(backend, case):
    spec = dict(PADDED_CASES[case])
    q, k, v = _qkv(spec.pop("q"), spec.pop("kv"))
    _assert_matches_eager(backend, q, k, v, **spec)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_padded_with_key_padding_mask_matches_eager(causal):
    q, k, v = _qkv((2, 4, 6, 8), (2, 2, 6, 8))
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    _assert_matches_eager("sdpa", q, k, v, attn_mask=key_mask, causal=causal)


PACKED_CASES = {
    # (query lengths, key lengths, causal, h, h_kv)
    "self": ([5, 1, 9, 3], [5, 1, 9, 3], False, 4, 4),
    "self_causal": ([5, 1, 9, 3], [5, 1, 9, 3], True, 4, 4),
    "cross": ([2, 7, 1], [6, 3, 4], False, 4, 4),
    "cross_causal": ([2, 7, 1], [6, 3, 4], True, 4, 4),
    "gqa_causal": ([5, 1, 9, 3], [5, 1, 9, 3], True, 6, 2),
    "single_sequence": ([11], [11], True, 4, 2),
    "all_length_1": ([1, 1, 1], [1, 1, 1], True, 2, 2),
    "empty_key_segment": ([3, 2, 4], [4, 0, 2], False, 2, 2),
    # causal self-attention runs per length bucket (32 tokens): several buckets, padding, an empty segment
    "causal_buckets": ([40, 5, 0, 33, 64, 31, 1, 70], [40, 5, 0, 33, 64, 31, 1, 70], True, 4, 2),
}


@pytest.mark.parametrize("case", PACKED_CASES)
@pytest.mark.parametrize("backend", PACKED_BACKENDS)
def test_packed_backends_match_eager(backend, case):
    lengths_q, lengths_k, causal, h, h_kv = PACKED_CASES[case]
    q, k, v = _qkv((sum(lengths_q), h, 8), (sum(lengths_k), h_kv, 8))
    cu_q, cu_k = (
        cu_seqlens_from_lengths(torch.tensor(lengths_q)),
        cu_seqlens_from_lengths(torch.tensor(lengths_k)),
    )
    _assert_matches_eager(backend, q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal)


@pytest.mark.parametrize(
    ("lengths", "calls"),
    [([30] * 10 + [5] * 10 + [100], 2), ([40, 100, 200], 3)],  # 2 buckets; 3 buckets for 3 segments
)
def test_causal_sdpa_varlen_runs_one_call_per_length_bucket_when_that_halves_the_calls(
    monkeypatch, lengths, calls
):
    q, k, v = _qkv((sum(lengths), 4, 8), (sum(lengths), 2, 8))
    cu = cu_seqlens_from_lengths(torch.tensor(lengths))
    expected = attention(q, k, v, cu_seqlens_q=cu, causal=True, backend="eager")
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **kw: seen.append(1) or sdpa(*a, **kw)
    )
    torch.testing.assert_close(
        attention(q, k, v, cu_seqlens_q=cu, causal=True, backend="sdpa_varlen"), expected
    )
    assert len(seen) == calls


def test_sdpa_varlen_rejects_cu_seqlens_that_do_not_cover_the_tokens():
    q, k, v = _qkv((6, 2, 8), (6, 2, 8))
    for causal in (True, False):
        with pytest.raises(ValueError, match="cover 5 query"):
            attention(q, k, v, cu_seqlens_q=torch.tensor([0, 2, 5], dtype=torch.int32), causal=causal)


def test_packed_equals_each_sequence_alone():
    lengths = [4, 1, 6]
    q, k, v = _qkv((11, 2, 8), (11, 2, 8))
    packed = attention(q, k, v, cu_seqlens_q=cu_seqlens_from_lengths(torch.tensor(lengths)), causal=True)
    starts = [0, 4, 5, 11]
    for a, b in zip(starts, starts[1:], strict=False):
        alone = attention(*(t[a:b].transpose(0, 1).unsqueeze(0) for t in (q, k, v)), causal=True)
        torch.testing.assert_close(packed[a:b], alone[0].transpose(0, 1))


@pytest.mark.parametrize("backend", ["eager", "sdpa", "sdpa_varlen", "flex"])
def test_hand_computed_bottom_right_causal_and_empty_rows(backend):
    """q = 0 makes every visible key equally likely: each output is the mean of the visible values."""
    q = torch.zeros(5, 1, 1, dtype=torch.float64)  # segments: 2 queries / 3 keys, 3 queries / 0 keys
    k = torch.zeros(3, 1, 1, dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64).view(3, 1, 1)
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 3, 3], dtype=torch.int32)
    with torch.no_grad():
        out = attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=True, backend=backend)
    expected = torch.tensor([1.5, 7 / 3, 0.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out.flatten(), expected)


def test_fully_masked_padded_row_is_zero_with_finite_gradients():
    q, k, v = _qkv((1, 2, 3, 4), (1, 2, 3, 4))
    mask = torch.tensor([[False, False, False], [True, False, True], [True, True, True]])
    for backend in ("eager", "sdpa"):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs, attn_mask=mask, backend=backend)
        out.sum().backward()
        assert torch.equal(out[:, :, 0], torch.zeros_like(out[:, :, 0]))
        assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_auto_runs_packed_and_padded_on_cpu():
    q, k, v = _qkv((6, 2, 8), (6, 2, 8))
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    torch.testing.assert_close(
        attention(q, k, v, cu_seqlens_q=cu, causal=True),
        attention(q, k, v, cu_seqlens_q=cu, causal=True, backend="eager"),
    )


@pytest.mark.parametrize(
    ("backend", "packed", "message"),
    [
        ("flash", True, "CUDA"),
        ("flash", False, "CUDA"),
        ("torch_varlen", True, "CUDA"),
        ("torch_varlen", False, "packed layout only"),
        ("sdpa_varlen", False, "packed layout only"),
        ("flex", True, "no backward on CPU"),
    ],
)
def test_explicit_backend_that_cannot_run_raises(backend, packed, message):
    if packed:
        q, k, v = (t.float().requires_grad_() for t in _qkv((6, 2, 8), (6, 2, 8)))
        kwargs = dict(cu_seqlens_q=torch.tensor([0, 2, 6], dtype=torch.int32))
    else:
        q, k, v = (t.float().requires_grad_() for t in _qkv((1, 2, 6, 8), (1, 2, 6, 8)))
        kwargs = {}
    with pytest.raises(AttentionBackendError, match=message):
        attention(q, k, v, backend=backend, **kwargs)


def test_flex_rejects_a_dense_mask_and_dropout():
    q, k, v = _qkv((1, 2, 3, 4), (1, 2, 3, 4))
    with torch.no_grad(), pytest.raises(AttentionBackendError, match="attn_mask"):
        attention(q, k, v, attn_mask=torch.ones(3, 3, dtype=torch.bool), backend="flex")
    with torch.no_grad(), pytest.raises(AttentionBackendError, match="dropout"):
        attention(q, k, v, dropout_p=0.1, backend="flex")


def test_invalid_arguments_raise_value_error():
    q, k, v = _qkv((6, 4, 8), (6, 3, 8))
    cu = torch.tensor([0, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="multiple of h_kv"):
        attention(q, k, v, cu_seqlens_q=cu)
    with pytest.raises(ValueError, match="int32"):
        attention(q, q, q, cu_seqlens_q=cu.long())
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, cu_seqlens_q=cu, backend="triton")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padded layout only"):
        attention(q, q, q, cu_seqlens_q=cu, attn_mask=torch.ones(6, 6, dtype=torch.bool))
