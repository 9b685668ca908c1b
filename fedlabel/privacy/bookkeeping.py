"""DP-SGD's clipped sum of per-record gradients in one backward pass, without materialising the
per-record gradients of linear layers (privacy.grad_sample_mode=bk).

The layers' inputs a are kept in the forward pass and the gradients g of the loss with respect
to their outputs come from one ``torch.autograd.grad`` call (no weight gradient is computed by
autograd). Per layer, with rows r = j, j + n, ... the k views of record j:

- Linear: record j's weight gradient is sum_r g_r a_r^T; its squared norm is
  sum_{r,s} (a_r . a_s + 1)(g_r . g_s) (the +1 is the bias), from k x k Gram matrices ("ghost
  norm", Goodfellow 2015; Li et al., ICLR 2022), and the clipped sum is one matrix product
  (c g)^T a with each row weighted by its record's clipping factor c ("book-keeping", Bu et al.,
  ICML 2023);
- Conv2d: per-row gradients (small for convolutions) from the weight gradient of the same
  convolution grouped by row, summed per record;
- GroupNorm: per-row gradients from the normalised input, summed per record.

The clipping is Opacus's flat clipping (:func:`fedlabel.privacy.dpsgd.clip_and_sum`): each
record's gradient over all parameters together scaled to L2 norm <= C."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = (nn.Linear, nn.Conv2d, nn.GroupNorm)


class BookKeeping(nn.Module):
    """``module`` (kept as ``_module``, like Opacus's wrappers, so the state_dict keys match)
    with forward hooks that keep each supported layer's input and output while autograd is on."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._module = module
        self._layers: dict[str, nn.Module] = {}
        owned = set()
        for name, layer in module.named_modules():
            direct = [
                f"{name}.{k}" if name else k for k, _ in layer.named_parameters(recurse=False)
            ]
            if not direct:
                continue
            if not isinstance(layer, SUPPORTED) or (
                isinstance(layer, nn.Conv2d)
                and (
                    layer.groups != 1
                    or layer.padding_mode != "zeros"
                    or isinstance(layer.padding, str)
                )
            ):
                raise ValueError(
                    f"grad_sample_mode=bk supports {[t.__name__ for t in SUPPORTED]} (Conv2d with"
                    f" groups=1 and numeric zero padding); {name or 'the model'} is"
                    f" {type(layer).__name__}: use grad_sample_mode=ew"
                )
            self._layers[name] = layer
            owned.update(direct)
            layer.register_forward_hook(self._keep(name))
        self._kept: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _keep(self, name: str):
        def hook(layer, inputs, output):
            if torch.is_grad_enabled():
                self._kept.setdefault(name, []).append((inputs[0], output))

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._module(x)

    def clipped_sum(
        self, loss: torch.Tensor, num_records: int, max_grad_norm: float
    ) -> list[torch.Tensor]:
        """sum_j min(1, C / ||G_j||) G_j over the n records, G_j = n x the gradient of ``loss``
        (a mean over records) from record j's rows, in ``named_parameters()`` order."""
        kept, self._kept = self._kept, {}
        names = [name for name in self._layers if name in kept]
        inputs = {name: _cat([a for a, _ in kept[name]]) for name in names}
        outputs = [o for name in names for _, o in kept[name]]
        grads = torch.autograd.grad(loss, outputs, allow_unused=True)
        grad_of, i = {}, 0
        for name in names:
            parts = [
                g if g is not None else torch.zeros_like(o)
                for g, (_, o) in zip(grads[i : i + len(kept[name])], kept[name])
            ]
            grad_of[name], i = _cat(parts), i + len(parts)
        n = num_records
        squared = loss.new_zeros(n)
        per_record: dict[str, tuple[torch.Tensor, ...]] = {}
        for name in names:
            layer, a, g = self._layers[name], inputs[name], grad_of[name]
            k = len(a) // n
            if isinstance(layer, nn.Linear):
                a, g = a.flatten(0, -2), g.flatten(0, -2)
                if len(a) != k * n:
                    raise ValueError("grad_sample_mode=bk: a Linear layer saw sequence inputs")
                gram_a = torch.einsum("rnd,snd->nrs", a.view(k, n, -1), a.view(k, n, -1))
                gram_g = torch.einsum("rnd,snd->nrs", g.view(k, n, -1), g.view(k, n, -1))
                bias = 1.0 if layer.bias is not None else 0.0
                squared += ((gram_a + bias) * gram_g).sum((1, 2))
                per_record[name] = (a, g)
            else:
                if isinstance(layer, nn.Conv2d):
                    rows_w = _conv_row_gradients(layer, a, g)
                else:  # GroupNorm
                    normalised = F.group_norm(a, layer.num_groups, eps=layer.eps)
                    rows_w = (normalised * g).flatten(2).sum(2)
                w = rows_w.view(k, n, *rows_w.shape[1:]).sum(0)
                parts = [w] + (
                    [g.flatten(2).sum(2).view(k, n, -1).sum(0)] if layer.bias is not None else []
                )
                squared += sum(p.flatten(1).pow(2).sum(1) for p in parts)
                per_record[name] = tuple(parts)
        factor = (max_grad_norm / (squared.sqrt() * n + 1e-6)).clamp(max=1.0) * n
        sums: dict[str, torch.Tensor] = {}
        for name in names:
            layer, prefix = self._layers[name], f"{name}." if name else ""
            if isinstance(layer, nn.Linear):
                a, g = per_record[name]
                weighted = factor.repeat(len(a) // n)[:, None] * g
                sums[prefix + "weight"] = weighted.T @ a
                if layer.bias is not None:
                    sums[prefix + "bias"] = weighted.sum(0)
            else:
                keys = ["weight", "bias"][: len(per_record[name])]
                for key, p in zip(keys, per_record[name]):
                    sums[prefix + key] = (factor @ p.flatten(1)).view(getattr(layer, key).shape)
        return [
            sums[k] if k in sums else torch.zeros_like(w)
            for k, w in self._module.named_parameters()
        ]


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _conv_row_gradients(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each row's weight gradient, R x C_out x C_in x kh x kw: the convolution over all rows
    as one sample with R groups, whose weight gradient is the rows' gradients side by side (on
    CPU faster than unfolding the input once the input has several channels)."""
    rows, weight = len(a), layer.weight
    grad = torch.ops.aten.convolution_backward(
        g.reshape(1, -1, *g.shape[2:]),
        a.reshape(1, -1, *a.shape[2:]),
        weight.detach().repeat(rows, 1, 1, 1),
        None,
        list(layer.stride),
        list(layer.padding),
        list(layer.dilation),
        False,
        [0, 0],
        rows,
        [False, True, False],
    )[1]
    return grad.view(rows, *weight.shape)
