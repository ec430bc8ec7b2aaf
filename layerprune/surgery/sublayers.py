"""The residual sub-layers of a block (``level="sublayer"``): the attention and MLP branches of a
transformer block, the residual pieces of an EfficientViT block.

A residual block with two or more residual sub-layers inside is offered as them: the chain of
residual units it runs, else the branches written inline in its forward (each replaced by
:class:`~layerprune.surgery.edit.Zeros`, with where the residual stream is read around it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layerprune.hooks import forward_hooks, main_tensor
from layerprune.surgery.calls import _Call, _close, _holds_params_inside
from layerprune.surgery.classify import _Found, _same_items


class _SubLayers:
    """The sub-layer split of a discovery walk, mixed into
    :class:`~layerprune.surgery.discover._Discovery`, whose ``model``, ``calls``, ``found``,
    ``segments`` and ``classify`` it uses."""

    def split(self) -> None:
        """Each residual block with two or more residual sub-layers inside is replaced by them: the
        chain of residual units it runs (EfficientViT's dw0 … ffn1), else its inline branches
        (timm ViT's attn and mlp). Other blocks stay as they are."""
        found = []
        for f in self.found:
            inner = (self.inner_chain(f) or self.inline_branches(f)) if f.stage and f.kind == "identity" else []
            found.extend(inner or [f])
        self.found = found

    def inner_chain(self, f: _Found) -> list[_Found]:
        """The residual units of the outermost chains inside the block, if two or more."""
        units: list[str] = []
        for inner, _ in self.model.get_submodule(f.name).named_modules(prefix=f.name):
            if any(inner == u or inner.startswith(u + ".") for u in units):
                continue
            for _, members in self.segments(inner):
                units += [u for u in members if u in self.calls and self.classify(u)[0] == "identity"
                          and self._informative_input(u)]
        if len(units) < 2:
            return []
        return [_Found(u, f.stage, *self.classify(u)) for u in units]

    def _informative_input(self, name: str) -> bool:
        """The unit's recorded input is not (close to) all zeros: at random init a zero-initialised
        norm layer can feed one values of 1e-7, and then any unit looks residual within the
        tolerance of the test."""
        call = self.calls[name]
        first = call.args[0] if call.args else None
        return (not isinstance(first, torch.Tensor) or not first.is_floating_point()
                or float(first.abs().max()) > 1e-3)

    def inline_branches(self, f: _Found) -> list[_Found]:
        """The block's direct children that are modules of modules, shape-preserving, called once,
        each a branch of its own — not a piece of a longer chain: with it returning zeros, no later
        module of modules in the block reads an input that no longer depends on the block's input
        (a bottleneck's ``conv1`` feeds ``conv2`` through nothing else) — and together its whole
        residual path: with all of them returning zeros, the block returns its input. Each is a
        sub-layer that a :class:`~layerprune.surgery.edit.Zeros` replaces."""
        block, call = self.model.get_submodule(f.name), self.calls.get(f.name)
        prefix = f"{f.name}."
        inner, candidates = [], []
        for child_name, child in block.named_children():
            name, c = prefix + child_name, self.calls.get(prefix + child_name)
            if c is None or not _holds_params_inside(child):
                continue
            inner.append(name)
            if c.calls == 1 and c.in_shape and c.in_shape == c.out_shape and isinstance(c.output, torch.Tensor):
                candidates.append(name)
        if (len(candidates) < 2 or call is None or not call.args or not isinstance(call.args[0], torch.Tensor)
                or not call.args[0].is_floating_point() or not self._informative_input(f.name)):
            return []
        candidates.sort(key=lambda n: self.calls[n].order)
        try:
            branches = [c for c in candidates if not self._feeds_chain(block, call, c, inner)]
            if len(branches) < 2:
                return []
            with forward_hooks(self.model, after={n: _zeros for n in branches}), torch.no_grad():
                out = block(*call.args, **(call.kwargs or {}))
        except Exception:  # cannot be re-run alone: the block stays whole
            return []
        if not (_close(out, call.args[0]) if isinstance(out, torch.Tensor) else _same_items(call.args, out, close=True)):
            return []
        streams = self.streams(f.name, branches)
        reason = "residual branch written inline in its block: becomes zeros (its weights and compute go)"
        return [_Found(n, f.stage, "identity", reason, (), "zeros", stream=stream) for n, stream in zip(branches, streams)]

    def _feeds_chain(self, block: nn.Module, call: _Call, child: str, inner: list[str]) -> bool:
        """With ``child`` returning zeros, some later module of modules of the block reads the same
        input whatever the block's input is (run twice, on the recorded input and on it plus
        noise): ``child`` is a piece of a chain, not a branch of its own."""
        later = [m for m in inner if m != child and self.calls[m].order > self.calls[child].order]
        if not later:
            return False
        x = call.args[0]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
        reads = []
        for first in (x, x + noise * (float(x.std()) if x.numel() > 1 else 1.0)):
            seen: dict[str, torch.Tensor] = {}

            def keep(name: str):
                def fn(module, args) -> None:  # returning a value would replace the arguments
                    value = main_tensor(args)
                    if isinstance(value, torch.Tensor):
                        seen.setdefault(name, value.clone())
                return fn

            with forward_hooks(self.model, after={child: _zeros}, before={m: keep(m) for m in later}), torch.no_grad():
                block(first, *call.args[1:], **(call.kwargs or {}))
            reads.append(seen)
        return any(m in reads[0] and m in reads[1] and reads[0][m].shape == reads[1][m].shape
                   and torch.allclose(reads[0][m], reads[1][m]) for m in later)

    def streams(self, name: str, branches: list[str]) -> list[tuple[str, str]]:
        """Where the residual stream is read around each branch: before the first, the block's
        input; after each, the input of the first later module of the block that reads a new
        tensor (not a branch's output on its way back, not the block's input: LayerNorm ``norm2``
        after the attention branch); after the last, the block's output. Branches that run side by
        side (no such module between them) are all read at the block's input and output."""
        prefix = f"{name}."
        children = [prefix + n for n, _ in self.model.get_submodule(name).named_children() if prefix + n in self.calls]
        # tensors that are not the stream: the block's input and what its modules returned
        other = {self.calls[name].in_key, None} | {self.calls[c].out_key for c in children}
        sites = [f"{name}:in"]
        for branch in branches[:-1]:
            start = self.calls[branch].order
            later = sorted((c for c in children if self.calls[c].order > start), key=lambda c: self.calls[c].order)
            site = next((c for c in later if self.calls[c].in_key not in other), None)
            if site is None:
                return [(f"{name}:in", f"{name}:out")] * len(branches)
            sites.append(f"{site}:in")
        sites.append(f"{name}:out")
        return list(zip(sites, sites[1:]))


def _zeros(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """A forward hook that makes a module return zeros (a sub-layer, as if removed)."""
    return torch.zeros_like(output)
