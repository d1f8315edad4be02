"""The sparse training path computes exactly what the dense path computes (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from scope_hub.testing.dictionaries import make_config, make_dictionary
from trainers.forward import SparsitySpec, forward, layer_params
from trainers.kernels import (
    JumpReLUDense,
    column_weight_grad_t,
    gather_pre,
    select_above,
    select_batch_topk,
    select_topk,
    sparse_decode,
)
from trainers.losses import aux_k_loss, reconstruction_loss

ARCHS = ["jumprelu", "topk", "batchtopk", "relu"]


def _grads(dictionary, x, t, spec, sparse, groups=None):
    dictionary.zero_grad(set_to_none=True)
    out = forward(layer_params(dictionary), x, spec, sparse=sparse, groups=groups)
    loss = reconstruction_loss(out.outputs, t) + sum(c.l0_tokens.mean() for c in out.codes)
    loss.backward()
    return out, {n: p.grad.clone() for n, p in dictionary.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["sae", "skip_transcoder", "clt"])
def test_sparse_path_equals_dense_path(arch: str, kind: str) -> None:
    torch.manual_seed(0)
    extra = {"affine_skip": True} if kind == "clt" else {}
    config = make_config(kind, arch, d_in=12, d_sae=40, n_layers=3, k=5, **extra)
    dictionary = make_dictionary(config, seed=1)
    n_layers = config.n_layers
    x = torch.randn(64, n_layers, 12)
    t = x if kind == "sae" else torch.randn(64, n_layers, config.d_out)
    groups = [10, 30] if kind == "sae" else None
    spec = SparsitySpec(arch, k=5, bandwidth=0.2)  # a wide band so the STE window holds entries
    dense_out, dense = _grads(dictionary, x, t, spec, False, groups)
    sparse_out, sparse = _grads(dictionary, x, t, spec, True, groups)
    for y_dense, y_sparse in zip(dense_out.outputs, sparse_out.outputs):
        torch.testing.assert_close(y_sparse, y_dense, atol=1e-5, rtol=1e-5)
    assert dense.keys() == sparse.keys() and dense
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-4, rtol=1e-4, msg=name)


def test_dense_jumprelu_threshold_grad_ignores_memory_layout() -> None:
    torch.manual_seed(0)
    pre = torch.randn(30, 16).T  # [16 rows, 30 latents], column-major: elementwise results keep its strides
    threshold = torch.rand(30, requires_grad=True)
    grads = []
    for p in (pre, pre.contiguous()):
        threshold.grad = None
        f, l0 = JumpReLUDense.apply(p, threshold, 0.5)
        (f.sum() + l0.sum()).backward()
        grads.append(threshold.grad.clone())
    assert grads[0].ne(0).any()
    torch.testing.assert_close(grads[0], grads[1])


def test_gather_pre_backward_matches_dense_matmul() -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 7)
    w = torch.randn(7, 30, requires_grad=True)
    b = torch.randn(30, requires_grad=True)
    sel = select_topk((x @ w + b).detach(), 4)
    g = torch.randn(sel.nnz)
    (gather_pre(sel, x, w, b) * g).sum().backward()
    dense_g = torch.zeros(50, 30).index_put_((sel.rows, sel.cols), g)
    torch.testing.assert_close(w.grad, x.T @ dense_g)
    torch.testing.assert_close(b.grad, dense_g.sum(0))
    assert w.grad.is_contiguous()


@pytest.mark.parametrize("block_columns", [1, 3, 7, 30, 64])
def test_encoder_grad_transposed_block_by_block_is_the_dense_product(block_columns: int) -> None:
    torch.manual_seed(1)
    x = torch.randn(40, 7)
    pre = x @ torch.randn(7, 30)
    pre[:, 10:17] = -1.0  # columns nothing selects: whole blocks without an entry at small block sizes
    sel = select_above(pre, 0.8)
    g = torch.randn(sel.nnz)
    got = column_weight_grad_t(sel, g, x, block_elements=block_columns * 7)
    dense_g = torch.zeros(40, 30).index_put_((sel.rows, sel.cols), g)
    assert got.shape == (7, 30) and got.is_contiguous()
    torch.testing.assert_close(got, x.T @ dense_g)


def test_sparse_decode_is_a_gather_of_rows() -> None:
    w = torch.randn(30, 5)
    pre = torch.randn(8, 30)
    sel = select_topk(pre, 3)
    dense = torch.zeros(8, 30).index_put_((sel.rows, sel.cols), sel.values)
    torch.testing.assert_close(sparse_decode(sel.values, sel, w), dense @ w)


def test_batch_topk_keeps_the_global_top_entries_exactly() -> None:
    torch.manual_seed(0)
    pre = torch.randn(32, 50)
    pre[3] += 5  # one token far above the rest: more than 2k of its entries must be kept
    sel, tau = select_batch_topk(pre, keep=4 * 32)
    flat = torch.relu(pre).flatten()
    expected = set(flat.topk(4 * 32).indices.tolist())
    assert set((sel.rows * 50 + sel.cols).tolist()) == expected
    assert tau == pytest.approx(float(flat.topk(4 * 32).values.min()))


def test_batch_topk_across_ranks_equals_the_whole_batch() -> None:
    torch.manual_seed(1)
    pre = torch.randn(32, 50)
    whole, _ = select_batch_topk(pre, keep=128)
    halves = pre[:16], pre[16:]
    pools = [h.topk(min(50, 2 * 128 // 16), dim=-1).values.flatten().topk(128).values for h in halves]
    gathered = torch.cat(pools)
    parts = [select_batch_topk(h, keep=128, global_pool=lambda _: gathered, any_rank=lambda f: f)[0] for h in halves]
    union = set((parts[0].rows * 50 + parts[0].cols).tolist()) | set(
        ((parts[1].rows + 16) * 50 + parts[1].cols).tolist()
    )
    assert union == set((whole.rows * 50 + whole.cols).tolist())


def test_aux_k_uses_only_dead_latents() -> None:
    torch.manual_seed(0)
    config = make_config("sae", "topk", d_in=8, d_sae=20, k=3)
    dictionary = make_dictionary(config, seed=2)
    params = layer_params(dictionary)
    x = torch.randn(16, 1, 8)
    out = forward(params, x, SparsitySpec("topk", k=3), sparse=True)
    dead = torch.zeros(1, 20, dtype=torch.bool)
    assert aux_k_loss(out.codes, params, x, torch.randn(16, 1, 8), dead, 4) is None
    dead[0, :5] = True
    loss = aux_k_loss(out.codes, params, x, torch.randn(16, 1, 8), dead, 4)
    loss.backward()
    assert bool(params[0].w_dec.grad[5:].eq(0).all()) and bool(params[0].w_dec.grad[:5].ne(0).any())
