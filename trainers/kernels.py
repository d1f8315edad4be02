"""Training-time math that autograd does not do well on its own.

* :class:`Selection`: the active (token, latent) entries of a batch in CSR form
  (``cols`` sorted by token, ``offsets`` per token), built from a dense
  pre-activation computed without autograd.
* :func:`gather_pre`: the pre-activations at the selected entries, differentiable
  w.r.t. the encoder. Its backward never builds a dense ``[batch, d_sae]``
  gradient: the encoder gradient is an ``embedding_bag`` weight-gradient (a
  sorted scatter of ``g * x`` rows), so a TopK step does one dense GEMM, not three.
* :func:`sparse_decode`: ``f @ w_dec`` as a gather of the active decoder rows.
* :func:`dense_pre`: the one dense GEMM of a sparse step, in the autocast dtype (bf16)
  when autocast is on; :func:`gather_pre` then recomputes the selected entries in
  fp32, and :func:`rounding_margin` widens threshold selections by the GEMM's
  rounding error so no entry a fp32 step would select is lost.
* :class:`JumpReLUSTE`: JumpReLU with the rectangle straight-through estimator
  (Rajamanoharan et al. 2024): the threshold gets pseudo-gradients from both
  the activation and the L0 step function; inputs get the plain JumpReLU gradient.

No torch sparse tensors are used (their CPU backward is broken in torch 2.x).

Example:
    >>> pre = torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 0.1]])
    >>> sel = select_above(pre, torch.tensor(0.2))
    >>> sel.cols.tolist(), sel.offsets.tolist(), sel.values.tolist()
    ([0, 2, 1], [0, 2], [0.5, 2.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Selection:
    """Selected entries of a ``[n_rows, n_cols]`` matrix, row-major (CSR without the values' grad)."""

    rows: torch.Tensor
    """Row (token) of each entry, int64 ``[nnz]``, non-decreasing."""
    cols: torch.Tensor
    """Column (latent) of each entry, int64 ``[nnz]``."""
    offsets: torch.Tensor
    """Index of each row's first entry, int64 ``[n_rows]`` (``embedding_bag`` offsets)."""
    values: torch.Tensor
    """Pre-activations at the entries (no autograd history)."""
    n_rows: int
    n_cols: int

    @classmethod
    def from_rows(
        cls, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
    ) -> Selection:
        counts = torch.bincount(rows, minlength=shape[0])
        return cls(rows, cols, counts.cumsum(0) - counts, values, shape[0], shape[1])

    @property
    def nnz(self) -> int:
        return self.cols.numel()

    def by_column(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(order, column_offsets)``: entries sorted by column (stable), and where each column starts.

        Computed once per selection and shared by every weight gradient of the step.
        """
        cached = self.__dict__.get("_by_column")
        if cached is None:
            order = _stable_argsort(self.cols, self.n_cols)
            counts = torch.bincount(self.cols, minlength=self.n_cols)
            cached = self.__dict__["_by_column"] = (order, counts.cumsum(0) - counts)
        return cached

    def row_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row sums of per-entry ``values`` (differentiable)."""
        return values.new_zeros(self.n_rows).index_add(0, self.rows, values)


def _stable_argsort(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """Stable argsort of small non-negative integer keys.

    On CPU torch's parallel stable sort is 5-20x slower than its single-threaded
    radix path for ~1e5 keys (measured on 2 cores), so the sort runs on one thread.
    """
    if keys.device.type != "cpu":
        return torch.argsort(keys, stable=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        small = keys.to(torch.int32) if bound < 2**31 else keys
        return torch.sort(small, stable=True).indices
    finally:
        torch.set_num_threads(threads)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes matmuls in on ``device``, or None when autocast is off there."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def dense_pre(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ w_enc + b_enc`` without autograd, in the autocast dtype when autocast is on.

    The ``out=`` form (a reused workspace) is not autocast-eligible, so the cast is explicit;
    ``out`` must have the result's dtype. Only used to *select* entries: their values are
    recomputed in ``x``'s precision by :func:`gather_pre`.

    Example:
        >>> x, w, b = torch.randn(4, 8), torch.randn(8, 16), torch.zeros(16)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     dense_pre(x, w, b).dtype
        torch.bfloat16
        >>> dense_pre(x, w, b).dtype
        torch.float32
    """
    dtype = autocast_dtype(x.device) or x.dtype
    with torch.no_grad():
        args = (b_enc.to(dtype), x.to(dtype), w_enc.to(dtype))
        return torch.addmm(*args, out=out) if out is not None else torch.addmm(*args)


ROUNDING_SIGMAS = 6.0
"""Width of :func:`rounding_margin` in standard deviations of the GEMM's input-rounding error."""


def rounding_margin(x: torch.Tensor, w_enc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-column bound on ``|dense_pre in dtype - the fp32 value|``, ``[d_sae]`` (0 for fp32).

    Rounding ``x`` and ``w`` to ``dtype`` (unit roundoff ``u``) perturbs each product
    ``x_i w_ic`` by a relative error of standard deviation ``u * sqrt(2/3)``; the sum's error
    has standard deviation at most ``u * sqrt(2/3) * sqrt(sum_i max_rows(x_i^2) w_ic^2)``.
    ``ROUNDING_SIGMAS`` of those plus the output's own rounding (``u`` relative, added by the
    caller for the threshold) bound what a bf16 selection can misplace.
    """
    if dtype == x.dtype:
        return torch.zeros(w_enc.shape[1], dtype=x.dtype, device=x.device)
    u = torch.finfo(dtype).eps / 2
    with torch.no_grad():
        spread = (x.detach().square().amax(0) @ w_enc.detach().square()).sqrt_()
    return spread.mul_(ROUNDING_SIGMAS * u * (2.0 / 3.0) ** 0.5)


def exact_values(sel: Selection, x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """``x[row] . w_enc[:, col] + b_enc[col]`` at every selected entry, in ``x``'s precision.

    One dot product per entry (``nnz * d_in`` multiply-adds, ~0.2% of the dense GEMM for a
    TopK k=32 batch) on a transposed copy of ``w_enc``: how a low-precision selection gets
    full-precision values.
    """
    w_t = w_enc.detach().t().contiguous()
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        x.detach(), w_t, sel.cols, sel.offsets, sel.rows, 0, -1
    )
    return dots + b_enc.detach().index_select(0, sel.cols)


def select_topk(pre: torch.Tensor, k: int) -> Selection:
    """The ``k`` largest entries of every row."""
    values, idx = pre.topk(k, dim=-1, sorted=False)
    n_rows = pre.shape[0]
    rows = torch.arange(n_rows, device=pre.device).repeat_interleave(k)
    offsets = torch.arange(0, n_rows * k, k, device=pre.device)
    return Selection(rows, idx.reshape(-1), offsets, values.reshape(-1), n_rows, pre.shape[1])


def select_above(pre: torch.Tensor, threshold: torch.Tensor, mask_buffer: torch.Tensor | None = None) -> Selection:
    """Entries strictly above ``threshold`` (a scalar or per-column ``[n_cols]`` tensor)."""
    n_rows, n_cols = pre.shape
    mask = torch.gt(pre, threshold, out=mask_buffer) if mask_buffer is not None else pre > threshold
    flat = mask.view(-1).nonzero().squeeze(1)
    rows = torch.div(flat, n_cols, rounding_mode="floor")
    return Selection.from_rows(rows, flat - rows * n_cols, pre.view(-1)[flat], (n_rows, n_cols))


def select_batch_topk(
    pre: torch.Tensor,
    keep: int,
    global_pool: Callable[[torch.Tensor], torch.Tensor] | None = None,
    any_rank: Callable[[bool], bool] | None = None,
) -> tuple[Selection, float]:
    """The ``keep`` largest positive entries of the whole batch, and the threshold that selects them.

    Per-row candidates (a few times ``keep / rows``) are pooled, the ``keep``-th
    largest pooled value is the threshold; a row whose every candidate passes is
    re-examined with more candidates, so the result is exact. ``global_pool``
    (data-parallel runs) gathers every rank's pooled top values, making ``keep``
    count the global batch; ``any_rank`` keeps the ranks' retry decisions in step.
    """
    n_rows, n_cols = pre.shape
    per_row = min(n_cols, max(1, 2 * keep // max(1, n_rows)))
    while True:
        values, idx = pre.topk(per_row, dim=-1, sorted=False)
        pool = values.reshape(-1)
        pool = pool.topk(min(keep, pool.numel()), sorted=False).values
        if global_pool is not None:
            pool = global_pool(pool)
        tau = pool.topk(min(keep, pool.numel()), sorted=False).values.min().clamp_min(0.0)
        short = per_row < n_cols and bool((values.min(dim=-1).values > tau).any())
        if not (any_rank(short) if any_rank is not None else short):
            break
        per_row = min(n_cols, per_row * 4)
    mask = (values >= tau) & (values > 0)
    rows, slots = mask.nonzero().unbind(1)
    sel = Selection.from_rows(rows, idx[rows, slots], values[rows, slots], (n_rows, n_cols))
    return sel, float(tau)


def column_weight_grad(sel: Selection, g: torch.Tensor, rows_in: torch.Tensor) -> torch.Tensor:
    """``out[c] = sum over entries e in column c of g[e] * rows_in[row(e)]``, as ``[n_cols, d]``.

    The gradient of a weight whose row c was gathered by the entries of column c.
    Computed as an ``embedding_bag`` *forward* with one bag per column over the
    column-sorted entries: no ``[nnz, d]`` temporary, no per-call sort, deterministic.
    """
    order, column_offsets = sel.by_column()
    return F.embedding_bag(sel.rows[order], rows_in, column_offsets, mode="sum", per_sample_weights=g[order])


TRANSPOSE_BLOCK_ELEMENTS = 1 << 22
"""Elements (16 MiB in fp32) of the ``[columns, d]`` slab :func:`column_weight_grad_t` transposes at a time."""


def column_weight_grad_t(
    sel: Selection, g: torch.Tensor, rows_in: torch.Tensor, block_elements: int = TRANSPOSE_BLOCK_ELEMENTS
) -> torch.Tensor:
    """:func:`column_weight_grad` transposed, ``[d, n_cols]`` contiguous: the layout of ``w_enc`` and its grad.

    Computed a block of columns at a time and copied into place, so only one ``[block, d]`` slab exists
    besides the result: transposing the whole ``[n_cols, d]`` gradient would hold two copies of it at the
    step's memory peak (half the parameter bytes of a latent shard).
    """
    order, column_offsets = sel.by_column()
    d, n_cols = rows_in.shape[1], sel.n_cols
    out = rows_in.new_empty(d, n_cols, dtype=g.dtype)
    rows, weights = sel.rows[order], g[order]
    block = max(1, block_elements // max(1, d))
    starts = list(range(0, n_cols, block))
    # every block's first entry, read in one transfer (not one sync per block on a GPU)
    firsts = [*column_offsets[starts].tolist(), sel.nnz]
    for i, lo in enumerate(starts):
        hi, first, last = min(lo + block, n_cols), firsts[i], firsts[i + 1]
        slab = F.embedding_bag(
            rows[first:last], rows_in, column_offsets[lo:hi] - first, mode="sum", per_sample_weights=weights[first:last]
        )
        out[:, lo:hi].copy_(slab.t())
    return out


class _GatherPre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w_enc, b_enc, x, sel):
        ctx.sel = sel
        ctx.save_for_backward(x)
        if sel.values.dtype != x.dtype:  # selected on a low-precision GEMM: recompute in x's precision
            sel.values = exact_values(sel, x, w_enc, b_enc)
        return sel.values.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sel = ctx.sel
        grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # [d_in, d_sae] contiguous like w_enc, which fused Adam needs (it copies non-contiguous tensors
            # in and out, which costs more), transposed block by block (no second whole-size copy)
            grad_w = column_weight_grad_t(sel, g, x)
        if ctx.needs_input_grad[1]:
            grad_b = g.new_zeros(sel.n_cols).index_add_(0, sel.cols, g)
        return grad_w, grad_b, None, None


def gather_pre(sel: Selection, x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor) -> torch.Tensor:
    """Pre-activations ``x @ w_enc + b_enc`` at the selected entries, differentiable w.r.t. w_enc, b_enc.

    The values come from ``sel.values`` (computed once, densely, without autograd); values
    computed in a lower precision than ``x`` (a bf16 GEMM) are recomputed exactly first.

    Example:
        >>> x = torch.randn(4, 3); w = torch.randn(3, 5, requires_grad=True); b = torch.zeros(5, requires_grad=True)
        >>> sel = select_topk((x @ w + b).detach(), 2)
        >>> gather_pre(sel, x, w, b).sum().backward()
        >>> dense = torch.zeros(4, 5).index_put_((sel.rows, sel.cols), torch.ones(8))
        >>> torch.allclose(w.grad, x.T @ dense)
        True
    """
    return _GatherPre.apply(w_enc, b_enc, x, sel)


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, w_dec, sel):
        ctx.sel = sel
        ctx.save_for_backward(values, w_dec)
        return F.embedding_bag(sel.cols, w_dec, sel.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad_out):
        values, w_dec = ctx.saved_tensors
        sel = ctx.sel
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:  # <grad_out[row(e)], w_dec[col(e)]> for every entry
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, w_dec, sel.cols, sel.offsets, sel.rows, 0, -1
            )
        if ctx.needs_input_grad[1]:
            grad_w = column_weight_grad(sel, values, grad_out)
        return grad_values, grad_w, None


def sparse_decode(values: torch.Tensor, sel: Selection, w_dec: torch.Tensor) -> torch.Tensor:
    """``f @ w_dec`` for the sparse features (``values`` at ``sel``'s entries): ``[n_rows, d_out]``.

    Differentiable w.r.t. ``values`` and ``w_dec``; the decoder gradient reuses the
    selection's column sort (see :func:`column_weight_grad`).
    """
    return _SparseDecode.apply(values, w_dec, sel)


class JumpReLUSTE(torch.autograd.Function):
    """``(f, step) = (pre * H(pre - t), H(pre - t))`` with rectangle-kernel pseudo-gradients for ``t``.

    ``d f / d t = -(t / bw) * K((pre - t) / bw)`` and ``d step / d t = -(1 / bw) * K(...)``
    with ``K`` the unit rectangle; ``d f / d pre = H(pre - t)``; ``step`` passes
    no gradient to ``pre``. ``threshold`` may be per-column ``[n_cols]`` (dense
    inputs) or per-entry (sparse inputs).

    Example:
        >>> pre = torch.tensor([0.0, 0.5, 0.375], requires_grad=True)
        >>> t = torch.tensor([0.25, 0.25, 0.25], requires_grad=True)
        >>> f, step = JumpReLUSTE.apply(pre, t, 0.5)
        >>> f.tolist(), step.tolist()
        ([0.0, 0.5, 0.375], [0.0, 1.0, 1.0])
        >>> step.sum().backward(); t.grad.tolist()   # only the entry within bw/2 of t
        [-0.0, -0.0, -2.0]
    """

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        active = pre > threshold
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * active, active.to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_f, grad_step):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_pre = grad_f.masked_fill(pre <= threshold, 0.0)
        if ctx.needs_input_grad[1]:
            if threshold.shape == pre.shape:  # per-entry thresholds (sparse path): small, elementwise
                window = ((pre - threshold).abs() < bw / 2).to(pre.dtype) / bw
                grad_t = -window * (threshold * grad_f + grad_step)
            else:  # dense [batch, d_sae] with per-column thresholds: only the narrow band matters
                grad_t = _band_threshold_grad(pre, threshold, grad_f, grad_step, bw)
        return grad_pre, grad_t, None


class JumpReLUDense(torch.autograd.Function):
    """Dense ``[batch, d_sae]`` JumpReLU: ``(f, l0)`` with ``l0`` the per-row count of active latents.

    The same maths as :class:`JumpReLUSTE` with per-column thresholds, but it returns the row
    sums the L0 penalty needs instead of the ``[batch, d_sae]`` step tensor, and keeps the
    boolean mask for the backward pass: three full passes over ``[batch, d_sae]`` fewer per step
    (a float copy of the step, its sum, and recomputing the mask).

    Example:
        >>> pre = torch.tensor([[0.0, 0.5, 0.375]], requires_grad=True)
        >>> t = torch.tensor([0.25, 0.25, 0.25], requires_grad=True)
        >>> f, l0 = JumpReLUDense.apply(pre, t, 0.5)
        >>> f.tolist(), l0.tolist()
        ([[0.0, 0.5, 0.375]], [2.0])
        >>> l0.sum().backward(); t.grad.tolist()   # as JumpReLUSTE: only the entry within bw/2 of t
        [0.0, 0.0, -2.0]
    """

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        active = pre > threshold
        ctx.save_for_backward(pre, threshold, active)
        ctx.bandwidth = bandwidth
        # the per-row counts are a loss reduction: float32 even when pre is bf16 (exact to 2^24)
        return pre * active, active.sum(-1, dtype=torch.promote_types(pre.dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad_f, grad_l0):
        pre, threshold, active = ctx.saved_tensors
        grad_pre = grad_t = None
        if ctx.needs_input_grad[0]:
            grad_pre = torch.where(active, grad_f, 0.0)  # 0 at inactive entries even if grad_f is not finite there
        if ctx.needs_input_grad[1]:
            grad_step = grad_l0.unsqueeze(-1).expand_as(pre)  # a view: the band grad only indexes it
            grad_t = _band_threshold_grad(pre, threshold, grad_f, grad_step, ctx.bandwidth)
        return grad_pre, grad_t, None


def _band_threshold_grad(
    pre: torch.Tensor, threshold: torch.Tensor, grad_f: torch.Tensor, grad_step: torch.Tensor, bw: float
) -> torch.Tensor:
    """Threshold gradient summed over rows, visiting only entries with ``|pre - t| < bw/2``.

    Saves ~6 full passes over ``[batch, d_sae]`` versus the elementwise formula; ``grad_step``
    may be an expanded view (it is, when it comes from a per-row sum), and is only indexed.
    """
    band = (pre - threshold).abs_() < bw / 2
    flat = band.reshape(-1).nonzero().squeeze(1)  # reshape: band keeps a transposed pre's strides
    n_cols = pre.shape[-1]
    rows, cols = torch.div(flat, n_cols, rounding_mode="floor"), flat % n_cols
    t = threshold.index_select(0, cols)
    contribution = -(t * grad_f[rows, cols] + grad_step[rows, cols]) / bw
    return torch.zeros_like(threshold).index_add_(0, cols, contribution)
