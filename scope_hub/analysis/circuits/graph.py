"""The attribution graph: nodes, sparse weighted edges, and the completeness check.

Node order follows circuit-tracer's ``Graph``::

    [features (F) | errors (n_layers x T, layer-major) | tokens (T) | logits (K)]

Features are the active dictionary latents at source positions, sorted by
(layer, position, index). An edge ``(target, source, w)`` is the direct linear
effect of ``source`` on ``target`` through the frozen replacement model: ``w =
source activation x (source decoder vector . d target / d source write)``.

Storage is by **row**: only targets have incoming edges (the logits and every
feature whose row was computed, ``row_nodes``), and a row is dense over its
sources because attention links every earlier position: ``rows[r, s]`` (4
bytes an edge, against 20 for int64 COO). The ``N x N`` matrix is never built;
:meth:`Graph.edges` gives the sparse (target, source, weight) list on demand.

**Completeness**: for every node with a row, ``sum(incoming) + bias == value``,
where ``value`` is the feature's pre-activation (or the demeaned logit) in the
real forward, and ``bias`` is what the replacement gives with every source
zeroed (encoder bias, decoder biases, constant positions). :meth:`Graph.completeness`
returns the residuals.

Example:
    >>> import torch
    >>> g = Graph(prompt="ab", input_ids=torch.tensor([1, 2]), tokens=["a", "b"], n_layers=1,
    ...           features=torch.tensor([[0, 1, 7]]), activations=torch.tensor([2.0]),
    ...           logit_ids=torch.tensor([5]), logit_probs=torch.tensor([1.0]), logit_labels=["x"],
    ...           row_nodes=torch.tensor([0, 5]),
    ...           rows=torch.tensor([[0, 0, 0, 0, 1.5, 0], [3.0, 0, 0, 0, 0, 0]]),
    ...           values=torch.tensor([2.0, 4.0]), bias=torch.tensor([0.5, 1.0]))
    >>> g.n_nodes, g.node_label(0), g.node_label(5)
    (6, 'feature L0 @1 #7', 'logit "x"')
    >>> g.completeness().tolist(), g.edges()[0].tolist()
    ([0.0, 0.0], [[0, 5], [4, 0]])
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from scope_hub.errors import GraphFileError

NODE_KINDS = ("feature", "error", "token", "logit")


@dataclass
class Graph:
    """An attribution graph (unpruned). See the module docstring for the node layout."""

    prompt: str
    input_ids: torch.Tensor
    """Prompt token ids ``[T]``."""
    tokens: list[str]
    """Decoded prompt tokens."""
    n_layers: int
    """Model layers (error nodes exist for each)."""
    features: torch.Tensor
    """``[F, 3]`` (layer, position, latent index) of every feature node."""
    activations: torch.Tensor
    """``[F]`` feature activations."""
    logit_ids: torch.Tensor
    """``[K]`` vocabulary ids of the logit nodes."""
    logit_probs: torch.Tensor
    """``[K]`` model probabilities of the logit nodes."""
    logit_labels: list[str]
    """Decoded logit tokens."""
    row_nodes: torch.Tensor
    """``[R]`` ascending ids of the nodes whose incoming edges were computed (features, then logits)."""
    rows: torch.Tensor
    """``[R, N]`` incoming edge weights of each row node, by source node (0: no edge)."""
    values: torch.Tensor
    """``[R]`` pre-activation (features) or demeaned logit (logits) of each row node in the real forward."""
    bias: torch.Tensor
    """``[R]`` the same read with every source zeroed (encoder bias, decoder biases, constant positions)."""
    dictionaries: list[str] = field(default_factory=list)
    """Names (registry keys, folders) of the dictionaries used, in layer order."""
    model_name: str | None = None
    """The base model's id or folder."""
    info: dict[str, Any] = field(default_factory=dict)
    """Build facts: timings, batch size, backward passes, peak memory, ``dictionary_layers`` (plain JSON values)."""

    # --- layout -----------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_ids.numel())

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def token_offset(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_offset(self) -> int:
        return self.token_offset + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_offset + self.n_logits

    def error_node(self, layer: int, pos: int) -> int:
        return self.error_offset + layer * self.n_pos + pos

    def token_node(self, pos: int) -> int:
        return self.token_offset + pos

    def logit_node(self, k: int) -> int:
        return self.logit_offset + k

    def feature_node(self, layer: int, pos: int, index: int) -> int:
        """Node id of an active feature (raises KeyError when it is not a node)."""
        hit = ((self.features[:, 0] == layer) & (self.features[:, 1] == pos) & (self.features[:, 2] == index)).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"feature (layer {layer}, pos {pos}, index {index}) is not active in this graph")
        return int(hit[0, 0])

    def node_kind(self, node: int) -> str:
        """``feature``, ``error``, ``token`` or ``logit``."""
        bounds = (self.error_offset, self.token_offset, self.logit_offset, self.n_nodes)
        for kind, stop in zip(NODE_KINDS, bounds):
            if node < stop:
                return kind
        raise IndexError(f"node {node} out of range ({self.n_nodes} nodes)")

    def node_label(self, node: int) -> str:
        """A short human-readable name."""
        kind = self.node_kind(node)
        if kind == "feature":
            layer, pos, index = self.features[node].tolist()
            return f"feature L{layer} @{pos} #{index}"
        if kind == "error":
            layer, pos = divmod(node - self.error_offset, self.n_pos)
            return f"error L{layer} @{pos}"
        if kind == "token":
            pos = node - self.token_offset
            return f"token @{pos} {self.tokens[pos]!r}"
        return f'logit "{self.logit_labels[node - self.logit_offset]}"'

    # --- edges ------------------------------------------------------------------------------
    @property
    def has_row(self) -> torch.Tensor:
        """``[N]`` bool: whether a node's incoming edges were computed."""
        mask = torch.zeros(self.n_nodes, dtype=torch.bool)
        mask[self.row_nodes] = True
        return mask

    def row_of(self, node: int) -> int:
        """Row index of ``node`` in :attr:`rows` (KeyError when its edges were not computed)."""
        hit = (self.row_nodes == node).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"node {node} ({self.node_label(node)}) has no computed incoming edges")
        return int(hit[0, 0])

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([2, E] (target, source), [E] weight)`` of every nonzero edge."""
        r, s = self.rows.nonzero(as_tuple=True)
        return torch.stack([self.row_nodes[r], s]), self.rows[r, s]

    def adjacency(self) -> torch.Tensor:
        """Sparse COO ``[N, N]`` (rows: targets, columns: sources)."""
        index, weight = self.edges()
        return torch.sparse_coo_tensor(index, weight, (self.n_nodes, self.n_nodes)).coalesce()

    def incoming(self, node: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(source nodes, weights) of ``node``'s nonzero incoming edges, strongest first."""
        row = self.rows[self.row_of(node)]
        sources = row.nonzero(as_tuple=True)[0]
        order = row[sources].abs().argsort(descending=True)
        return sources[order], row[sources][order]

    def outgoing(self, node: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(target nodes, weights) of ``node``'s nonzero outgoing edges, strongest first."""
        column = self.rows[:, node]
        hit = column.nonzero(as_tuple=True)[0]
        order = column[hit].abs().argsort(descending=True)
        return self.row_nodes[hit][order], column[hit][order]

    def completeness(self) -> torch.Tensor:
        """``value - (sum of incoming edges + bias)`` for every row node ``[R]`` (summed in fp64)."""
        return self.values.double() - self.rows.double().sum(1) - self.bias.double()

    def relative_completeness_error(self) -> float:
        """max |residual| / max |value| over row nodes: a scale-free precision figure."""
        scale = self.values.double().abs().max().clamp(min=1e-30)
        return float(self.completeness().abs().max() / scale)

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the graph as a ``torch.save`` file of plain tensors and JSON values (loadable with weights_only)."""
        path = Path(path)
        torch.save(asdict(self), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Read a graph written by :meth:`save` (``torch.load(weights_only=True)``: no pickled code).

        GraphFileError for anything else: a pickle of arbitrary objects (refused, never run), a
        truncated or foreign file, or a dict that is not a graph's.
        """
        path = Path(path)
        try:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
                warnings.simplefilter("ignore")
                data = torch.load(path, weights_only=True)
        except (FileNotFoundError, IsADirectoryError):
            raise GraphFileError(
                f"{path}: no such graph file; write one with Graph.save or `scope-hub trace`"
            ) from None
        except pickle.UnpicklingError:
            raise GraphFileError(
                f"{path}: not a graph written by Graph.save (only tensors and plain values are read; "
                "a pickle of other objects is refused, never run)"
            ) from None
        except Exception as exc:  # torch raises RuntimeError / EOFError / zipfile errors for foreign bytes
            raise GraphFileError(f"{path}: not a graph written by Graph.save ({type(exc).__name__})") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise GraphFileError(f"{path}: not a graph written by Graph.save (unexpected contents)")
        try:
            return cls(**data)
        except TypeError as exc:
            raise GraphFileError(f"{path}: not a graph written by Graph.save ({exc})") from None
