"""Quick transcoders for every MLP block of a model, fitted in seconds: for trying circuit tracing offline.

Real trained transcoders may not be at hand offline, so this fits quick ones
from harvested MLP (input, output) pairs (``harvest`` then ``fit_transcoder``,
or both at once with ``quick_transcoders``):

* encoder: ``d_sae`` unit directions taken from normalised harvested inputs
  (an exemplar dictionary), each with a JumpReLU threshold at the
  ``1 - l0 / d_sae`` quantile of its pre-activations, so about ``l0`` latents
  fire per token;
* decoder (and, for skip transcoders, the affine skip): ridge least squares of
  the MLP output on the sparse features.

They reconstruct poorly (error nodes carry much; ``transcoder_fvu`` measures it), but they
are genuine JumpReLU transcoders in Gemma Scope 2's format, which is all
attribution needs: use them to try the tooling, not to interpret a model. On
Gemma 3 270M all 18 layers take about 25 s on 2 CPU cores. For transcoders
worth interpreting, train them: ``python -m trainers`` with
``dictionary.type=transcoder`` (one run per layer; see docs/training.md), or
pull published ones (Gemma Scope 2).

Example (a tiny model and tokenizer; Gemma 3 270M works the same way):
    >>> import tempfile
    >>> from scope_hub.dictionaries import Dictionary
    >>> from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer
    >>> model, tok = tiny_gemma3(), tiny_tokenizer()
    >>> tcs = quick_transcoders(model, tok, d_sae=32, l0=4.0)
    >>> len(tcs), tcs[2].config.type, tcs[2].config.layer, tcs[2].config.site_out
    (3, 'transcoder', 2, 'mlp_out')
    >>> folder = tcs[0].save_pretrained(tempfile.mkdtemp() + "/layer_0")
    >>> Dictionary.from_pretrained(folder).config.d_sae
    32
"""

from __future__ import annotations

import torch

from scope_hub.dictionaries import Dictionary, SkipTranscoder, Transcoder
from scope_hub.hookpoints import adapter_for
from scope_hub.hooks import capture
from scope_hub.metadata import DictionaryConfig

TEXT = """\
The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable
metal type with an oil-based ink and a screw press adapted from wine making. Within fifty years, presses were
operating in more than two hundred cities across Europe, and the cost of books fell dramatically.
Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, water is split,
oxygen is released, and carbon dioxide is fixed into sugars through the Calvin cycle.
def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
The capital of France is Paris, the capital of Japan is Tokyo, and the capital of Canada is Ottawa. Berlin is
the largest city in Germany, while Madrid sits almost exactly at the centre of Spain.
If x + 3 = 7, then x = 4. The derivative of x squared is 2x, and the integral of 1/x is the natural logarithm.
Seventeen is a prime number; eighteen is not, because it equals two times nine.
She opened the door slowly, listening for any sound from the kitchen. The kettle was still warm, and a letter
lay on the table, folded twice and addressed in handwriting she had not seen for many years.
To make bread, mix flour, water, salt and yeast, knead the dough for ten minutes, let it rise for an hour,
shape it, and bake it in a hot oven until the crust is brown and sounds hollow when tapped.
The stock market fell sharply on Monday after the central bank raised interest rates by half a percentage
point, its largest increase in two decades. Analysts expect inflation to slow later in the year.
In 1969, Neil Armstrong and Buzz Aldrin landed on the Moon while Michael Collins orbited above in the command
module. Armstrong's first words on the surface were broadcast to hundreds of millions of people.
Dear team, the meeting has moved to Thursday at three o'clock. Please bring the quarterly figures and your
questions about the new schedule. Thanks, Maria.
Water boils at one hundred degrees Celsius at sea level, but at lower temperatures on high mountains, because
the air pressure is lower. Ice is less dense than liquid water, which is why lakes freeze from the top down.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
SELECT name, age FROM users WHERE age > 30 ORDER BY name;
Mount Everest is the highest mountain on Earth, with a summit 8,849 metres above sea level, on the border
between Nepal and the Tibet Autonomous Region of China. The Amazon is the largest rainforest in the world.
"""


@torch.no_grad()
def harvest(
    model: torch.nn.Module, tokenizer, text: str = TEXT, chunk: int = 128
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Layer -> (mlp_in ``[N, d]``, mlp_out ``[N, d]``) over ``text`` (BOS positions dropped)."""
    adapter = adapter_for(model)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    bos = tokenizer.bos_token_id
    blocks = [adapter.mlp_block(L) for L in range(adapter.n_layers)]
    points = [str(b.input) for b in blocks] + [str(b.output) for b in blocks]
    pairs: dict[int, tuple[list, list]] = {L: ([], []) for L in range(adapter.n_layers)}
    body = ids[1:] if bos is not None and int(ids[0]) == bos else ids
    for start in range(0, body.numel(), chunk):
        piece = body[start : start + chunk]
        batch = torch.cat([ids[:1], piece])[None] if bos is not None else piece[None]
        with capture(model, points) as acts:
            model(input_ids=batch, use_cache=False, logits_to_keep=1)
        for L, block in enumerate(blocks):
            pairs[L][0].append(acts[str(block.input)][0, 1:])
            pairs[L][1].append(acts[str(block.output)][0, 1:])
    return {L: (torch.cat(x), torch.cat(y)) for L, (x, y) in pairs.items()}


def fit_transcoder(
    x: torch.Tensor,
    y: torch.Tensor,
    layer: int,
    *,
    d_sae: int = 256,
    l0: float = 12.0,
    skip: bool = False,
    ridge: float = 1e-3,
    seed: int = 0,
    model_id: str | None = None,
) -> Dictionary:
    """A JumpReLU (skip) transcoder ``mlp_in -> mlp_out`` of ``layer`` fitted to ``(x, y)``."""
    gen = torch.Generator().manual_seed(seed + layer)
    x64, y64 = x.double(), y.double()
    picks = torch.randperm(x.shape[0], generator=gen)[: min(d_sae, x.shape[0])]
    w_enc = (x64[picks] / x64[picks].norm(dim=-1, keepdim=True)).T  # [d, d_sae]
    d_sae = w_enc.shape[1]
    pre = x64 @ w_enc
    threshold = pre.quantile(1 - min(0.5, l0 / d_sae), dim=0)
    feats = torch.relu(pre) * (pre > threshold)
    design = torch.cat([feats, x64] if skip else [feats], dim=1)
    mean_d, mean_y = design.mean(0), y64.mean(0)
    centered = design - mean_d
    gram = centered.T @ centered
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    weights = torch.linalg.solve(gram, centered.T @ (y64 - mean_y))
    cls = SkipTranscoder if skip else Transcoder
    config = DictionaryConfig(
        type="skip_transcoder" if skip else "transcoder",
        architecture="jumprelu",
        d_in=x.shape[1],
        d_sae=d_sae,
        d_out=y.shape[1],
        site="mlp_in",
        site_out="mlp_out",
        layer=layer,
        model=model_id,
    )
    tc = cls(config)
    with torch.no_grad():
        tc.w_enc.copy_(w_enc), tc.b_enc.zero_(), tc.threshold.copy_(threshold)
        tc.w_dec.copy_(weights[:d_sae]), tc.b_dec.copy_(mean_y - mean_d @ weights)
        if skip:
            tc.affine_skip_connection.copy_(weights[d_sae:])
    return tc.eval()


def quick_transcoders(model: torch.nn.Module, tokenizer, text: str = TEXT, **kwargs) -> list[Dictionary]:
    """One fitted transcoder per layer of ``model``, in layer order (``kwargs`` go to :func:`fit_transcoder`)."""
    pairs = harvest(model, tokenizer, text)
    return [fit_transcoder(x, y, L, **kwargs) for L, (x, y) in pairs.items()]


def transcoder_fvu(tc: Dictionary, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of variance of ``y`` the transcoder leaves unexplained."""
    with torch.no_grad():
        pred = tc(x)
    return float(((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
