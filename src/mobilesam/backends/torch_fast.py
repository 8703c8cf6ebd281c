"""The CPU fast paths of inference, applied to a reference model in one explicit step.

``optimize_for_inference(sam)`` returns a model that computes what ``sam`` computes in eval mode
(within float rounding: ``tests/test_speed_parity.py``), faster on CPU:

- TinyViT: every BatchNorm is folded into the convolution before it, and oneDNN's fused kernels run
  convolution + exact GELU and convolution + residual add in one pass (in fp32, or in bf16 under CPU
  bfloat16 autocast);
- two-way transformer: a cross attention with a handful of prompt tokens on one side is re-associated
  so that the 4096 image tokens are never projected (2-3x fewer operations), with an in-place softmax
  over the short axis;
- mask decoder: the image source is summed straight into a channels-last buffer (token layout), and
  the output upscaling (two non-overlapping 2x2 transposed convolutions) runs as matrix products in
  token layout;
- prompt encoder: the dense positional encoding is computed once and cached;
- ``postprocess_masks``: bilinear resizing one axis at a time, without the 1024 x 1024 intermediate.

``mobilesam.modeling`` stays the reference computation, and nothing there checks for inference:
training and autograd use it as it is. ONNX export uses :func:`optimize_for_export`, the two rewrites
above that are plain tensor algebra (re-associated attention, token-layout upscaling: they trace and
differentiate), because ONNX Runtime runs that decoder graph about twice as fast as the reference one
(64 prompts: 1.6 s against 3-6 s on 2 busy cores).

How the weights are shared
--------------------------
The optimised model is a second view of the same modules, not a copy. Every module whose computation
has a fast path is *viewed*: a new object of a subclass of its class (``isinstance`` still holds)
whose ``__dict__`` is a shallow copy of the original's. It therefore holds the very same
``_parameters`` and ``_buffers`` dictionaries (and hooks) as the reference module, so the tensors are
the same objects: ``load_state_dict``, in-place changes, ``.to()`` / ``.half()`` and even a parameter
re-assigned on either model are seen by both. Containers above a viewed module are viewed the same way
under their own class, with a new ``_modules`` dictionary holding the views of their children; any
sub-tree without a fast path (e.g. a ViT image encoder) is the reference's own module object. So
``state_dict()`` of both models has the same keys and the same tensors. What is not shared: the child
containers (a sub-module *replaced* on the reference later is not seen by the view; optimise again) and
the ``training`` flag (views are always in eval mode).

Derived tensors are cached and keyed on the storage, version, dtype and device of every tensor they
come from (and the BatchNorm's eps), so weights loaded or changed in place at any time take effect on
the next call: folded convolution weights (one per dtype in use) and the dense positional encoding.

Inference only
--------------
The viewed encoder and decoder modules raise a ``RuntimeError`` when autograd is enabled (their folded
weights are detached and their kernels write in place, so gradients would be wrong or fail) and while
``torch.jit`` traces or scripts (ONNX export of oneDNN kernels and caches is meaningless): run them under
``torch.no_grad()`` or ``torch.inference_mode()``, and train or export the reference model, which
shares the weights. ``train()`` on the optimised model raises too; ``eval()`` is a no-op.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import tiny_vit, transformer
from ..modeling.mask_decoder import MaskDecoder
from ..modeling.prompt_encoder import PromptEncoder
from ..modeling.sam import Sam

__all__ = ["InferenceSam", "optimize_for_export", "optimize_for_inference"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _require_inference(module: nn.Module) -> None:
    """Raise when ``module`` (a fast view) runs where only the reference computation is right."""
    name = type(module).__name__
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: the model from optimize_for_inference() runs under torch.no_grad() or "
            "torch.inference_mode() only (folded weights and in-place kernels do not track gradients); with autograd "
            "enabled, use the reference model it was made from (it shares the weights)"
        )
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        raise RuntimeError(
            f"{name}: the model from optimize_for_inference() cannot be traced or exported (oneDNN "
            "kernels, cached weights); export the reference model it was made from instead"
        )


def _version_key(*tensors: torch.Tensor) -> tuple:
    """Identity of the current contents of ``tensors``: changes when one is replaced or written in place."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class _View:
    """Mixin of the fast classes: state a view needs beyond the reference module's ``__dict__``."""

    def _init_view(self) -> None:
        """Called once on a new view (``__init__`` is not: the reference module is already built)."""


# ---- TinyViT ------------------------------------------------------------------------------------

# oneDNN's fused convolutions (the kernels torch.compile uses on CPU) are private ops: checked for here
# and abandoned for good on the first failure.
_FUSED_CONV = [hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()]


def _fused_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype a fused CPU convolution runs in: fp32, bf16 under CPU bf16 autocast, else None (no fusion)."""
    if not _FUSED_CONV[0] or x.device.type != "cpu":
        return None
    try:
        autocast = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if autocast else None
    except (TypeError, AttributeError):  # torch < 2.4
        autocast = torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_cpu_dtype() if autocast else None
    if autocast:
        return torch.bfloat16 if dtype == torch.bfloat16 else None
    return torch.float32 if x.dtype == torch.float32 else None


class FoldedConv2d_BN(_View, tiny_vit.Conv2d_BN):  # noqa: N801 - named after the official Conv2d_BN
    """Conv2d_BN with the BatchNorm (eval-mode statistics) folded into the convolution: one pass over
    the activations instead of two."""

    def _init_view(self) -> None:
        self._folded: tuple[tuple, dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]]] | None = None

    def folded(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolution weight (C_out, C_in / groups, k, k) and bias (C_out,) with the BatchNorm folded in."""
        bn = self.bn
        sources = (self.c.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = _version_key(*sources) + (bn.eps,)
        if self._folded is None or self._folded[0] != key:
            w, gamma, beta, mean, var = (t.detach() for t in sources)
            scale = gamma / torch.sqrt(var + bn.eps)
            self._folded = (key, {w.dtype: (w * scale.view(-1, 1, 1, 1), beta - mean * scale)})
        cache = self._folded[1]
        dtype = dtype or self.c.weight.dtype
        if dtype not in cache:
            weight, bias = next(iter(cache.values()))
            cache[dtype] = (weight.to(dtype), bias.to(dtype))
        return cache[dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _require_inference(self)
        weight, bias = self.folded()
        c = self.c
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def conv_act(self, x: torch.Tensor, act: nn.Module | None = None, add: torch.Tensor | None = None) -> torch.Tensor:
        """``act(self(x) + add)``; on the CPU one oneDNN kernel does the convolution with the residual
        add or the exact GELU fused in, saving a pass over the activations."""
        _require_inference(self)
        dtype = _fused_dtype(x)
        if dtype is not None:
            weight, bias = self.folded(dtype)
            c = self.c
            geom = (list(c.padding), list(c.stride), list(c.dilation), c.groups)
            x = x.to(dtype)
            try:
                if add is not None:
                    y = torch.ops.mkldnn._convolution_pointwise(
                        x, add.to(dtype), weight, bias, *geom, "add", 1.0, None, [], None
                    )
                    return act(y) if act is not None else y
                if isinstance(act, nn.GELU) and act.approximate == "none":
                    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geom, "gelu", [], "none")
            except RuntimeError:  # a torch build without these fusions: the plain ops from now on
                _FUSED_CONV[0] = False
        y = self(x)
        if add is not None:
            y = y + add
        return act(y) if act is not None else y


class FusedPatchEmbed(_View, tiny_vit.PatchEmbed):
    """PatchEmbed with the first convolution and its GELU in one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv1, act, conv2 = self.seq
        return conv2(conv1.conv_act(x.contiguous(memory_format=torch.channels_last), act))


class FusedMBConv(_View, tiny_vit.MBConv):
    """MBConv with each convolution and its GELU, and the last one with the residual add, in one kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2.conv_act(self.conv1.conv_act(x, self.act1), self.act2)
        return self.conv3.conv_act(y, self.act3, add=x)


class FusedPatchMerging(_View, tiny_vit.PatchMerging):
    """PatchMerging with the first two convolutions fused with their GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.input_resolution
            x = tiny_vit._tokens_to_nchw(x, h, w)
        x = self.conv2.conv_act(self.conv1.conv_act(x, self.act), self.act)
        return tiny_vit._nchw_to_tokens(self.conv3(x))


# ---- Two-way transformer ------------------------------------------------------------------------


def _softmax_short(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a few prompt tokens), in place: torch's kernel is slow for those sizes."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


class ReassociatedAttention(_View, transformer.Attention):
    """Attention that re-associates its products when one side has only a few tokens.

    The decoder's cross attentions pair a handful of prompt tokens with 4096 image tokens. With fewer
    than internal_dim / num_heads tokens on one side, the large projections move onto that small side
    (2-3x fewer operations) and the image tokens are never projected; the result is the same. Plain
    tensor algebra: it traces (export) and differentiates.
    """

    def _short_softmax(self, x: torch.Tensor) -> torch.Tensor:
        return x.softmax(dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        nq, nk = q.shape[1], k.shape[1]
        if nk > nq and nq * self.num_heads < self.internal_dim:
            return self._few_queries(q, k, v)
        if nq > nk and nk * self.num_heads < self.internal_dim:
            return self._few_keys(q, k, v)
        return super().forward(q, k, v)

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q_h (k W_k,h + b_k,h)^T) (v W_v,h + b_v,h) computed as softmax((q_h W_k,h) k^T + q_h b_k,h)
        ((P_h v) W_v,h + b_v,h): q (B, T, C) few, k and v (B, N, C) many -> (B, T, C)."""
        b, t, _ = q.shape
        h, dh = self.num_heads, self.internal_dim // self.num_heads
        qh = self._heads(self.q_proj(q))  # (B, h, T, dh)
        a = qh @ self.k_proj.weight.view(h, dh, -1)  # (B, h, T, C)
        scores = a.reshape(b, h * t, -1) @ k.transpose(1, 2)  # (B, h*T, N)
        bias = (qh * self.k_proj.bias.view(h, 1, dh)).sum(-1, keepdim=True)  # (B, h, T, 1)
        p = ((scores.view(b, h, t, -1) + bias) * dh**-0.5).softmax(dim=-1)
        pv = (p.reshape(b, h * t, -1) @ v).view(b, h, t, -1)  # (B, h, T, C)
        out = pv @ self.v_proj.weight.view(h, dh, -1).transpose(1, 2) + self.v_proj.bias.view(h, 1, dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.internal_dim))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax((q W_q,h + b_q,h) k_h^T) v_h W_o,h summed over heads, computed as
        softmax(q (W_q,h k_h^T) + b_q,h k_h^T) (v_h W_o,h): q (B, N, C) many, k and v (B, T, C) few -> (B, N, C)."""
        b, n, _ = q.shape
        t = k.shape[1]
        h, dh = self.num_heads, self.internal_dim // self.num_heads
        kh = self._heads(self.k_proj(k))  # (B, h, T, dh)
        vh = self._heads(self.v_proj(v))
        g = self.q_proj.weight.view(h, dh, -1).transpose(1, 2) @ kh.transpose(2, 3)  # (B, h, C, T)
        g = g.permute(0, 2, 1, 3).reshape(b, -1, h * t)  # (B, C, h*T)
        bias = (kh * self.q_proj.bias.view(h, 1, dh)).sum(-1).reshape(b, 1, h * t)
        p = self._short_softmax(((q @ g + bias) * dh**-0.5).view(b, n, h, t))
        u = vh @ self.out_proj.weight.view(-1, h, dh).permute(1, 2, 0)  # (B, h, T, C_out)
        return p.view(b, n, h * t) @ u.reshape(b, h * t, -1) + self.out_proj.bias


class FewTokenAttention(ReassociatedAttention):
    """ReassociatedAttention for eager inference: the short softmax in place."""

    def _short_softmax(self, x: torch.Tensor) -> torch.Tensor:
        return _softmax_short(x)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        _require_inference(self)
        return super().forward(q, k, v)


# ---- Mask decoder, prompt encoder, Sam ------------------------------------------------------------


class TokenLayoutUpscalingMaskDecoder(_View, MaskDecoder):
    """MaskDecoder whose output upscaling runs in token layout (B, H*W, C). Plain tensor algebra: it
    traces (export) and differentiates."""

    def _masks(self, src: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``output_upscaling`` and the hypernetwork dot products in token layout: (B, H*W, C) and
        (B, M, C') -> masks (B, M, 4H, 4W).

        The two ConvTranspose2d(kernel 2, stride 2) never overlap: each input pixel maps to its own 2x2
        block, so each is a matrix product in token layout, and the LayerNorm2d over channels is a
        LayerNorm over the last dimension. The pixels are put back in raster order only for the M
        masks, not for the C' channels.
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        b = src.shape[0]
        x = src @ up1.weight.permute(0, 2, 3, 1).flatten(1)  # (B, H*W, 2*2*C1): (kh, kw, c1)
        c1 = up1.weight.shape[1]
        x = x.view(b, -1, c1) + up1.bias
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        c2 = up2.weight.shape[1]
        x = x @ up2.weight.permute(0, 2, 3, 1).flatten(1)  # (B, H*W*4, 2*2*C2)
        x = act2(x.view(b, -1, c2) + up2.bias)  # (B, H*W*16, C2) in (h, w, kh, kw, kh2, kw2) order
        m = hyper_in.shape[1]
        masks = (x @ hyper_in.transpose(1, 2)).view(b, h, w, 2, 2, 2, 2, m)
        # Output row 4h + 2kh + kh2, column 4w + 2kw + kw2.
        return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, m, 4 * h, 4 * w)


class TokenLayoutMaskDecoder(TokenLayoutUpscalingMaskDecoder):
    """MaskDecoder for eager inference: the image in token layout (B, H*W, C) from input to masks."""

    def _image_source(
        self, image_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """Image embedding + dense prompt embedding summed straight into a channels-last buffer
        (B, C, H, W): the transformer's flatten/transpose is then a free view."""
        _require_inference(self)
        _, c, h, w = dense_prompt_embeddings.shape
        dtype = torch.promote_types(image_embeddings.dtype, dense_prompt_embeddings.dtype)  # as the plain sum
        src = torch.empty((batch, h, w, c), dtype=dtype, device=dense_prompt_embeddings.device).permute(0, 3, 1, 2)
        torch.add(
            image_embeddings.expand(batch, -1, -1, -1), dense_prompt_embeddings.expand(batch, -1, -1, -1), out=src
        )
        return src


class CachedPEPromptEncoder(_View, PromptEncoder):
    """PromptEncoder whose dense positional encoding (the same for every prompt) is cached."""

    def _init_view(self) -> None:
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, C, H, W), channels-last in memory (the
        decoder's token layout), recomputed when the random frequency matrix changes."""
        key = _version_key(self.pe_layer.positional_encoding_gaussian_matrix)
        if self._dense_pe is None or self._dense_pe[0] != key:
            pe = super().get_dense_pe()
            self._dense_pe = (key, pe.contiguous(memory_format=torch.channels_last))
        return self._dense_pe[1]


def _resize_crop_resize(x: torch.Tensor, size: int, crop: int, out: int) -> torch.Tensor:
    """Along the last axis of (N, C, L): linear resize to ``size``, keep the first ``crop``, resize to ``out``."""
    x = F.interpolate(x, size=size, mode="linear", align_corners=False)[..., :crop]
    return F.interpolate(x, size=out, mode="linear", align_corners=False)


class InferenceSam(_View, Sam):
    """The model returned by :func:`optimize_for_inference`: a ``Sam`` over the fast views."""

    def train(self, mode: bool = True) -> InferenceSam:
        if mode:
            raise RuntimeError(
                "InferenceSam.train(): the model from optimize_for_inference() is inference-only; "
                "train the reference model it was made from (it shares the weights)"
            )
        return self  # views are always in eval mode; shared reference modules keep their own flag

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits (B, M, 256, 256) -> logits at the original image size (B, M, H, W).

        Bilinear interpolation is separable, so this runs one axis at a time: the rows are resampled
        while the masks are still 256 wide, and the full-size 1024 x 1024 intermediate is never made
        (the reference's two 2-D resizes, up to float rounding).
        """
        b, m, lh, lw = masks.shape
        x = masks.reshape(b * m, lh, lw).transpose(1, 2)  # rows last
        x = _resize_crop_resize(x, self.img_size, int(input_size[0]), int(original_size[0]))
        x = _resize_crop_resize(x.transpose(1, 2), self.img_size, int(input_size[1]), int(original_size[1]))
        return x.view(b, m, int(original_size[0]), int(original_size[1]))


# Exact classes only: a user's subclass of a reference module keeps its own code (and the reference path).
FAST_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    tiny_vit.Conv2d_BN: FoldedConv2d_BN,
    tiny_vit.PatchEmbed: FusedPatchEmbed,
    tiny_vit.MBConv: FusedMBConv,
    tiny_vit.PatchMerging: FusedPatchMerging,
    transformer.Attention: FewTokenAttention,
    MaskDecoder: TokenLayoutMaskDecoder,
    PromptEncoder: CachedPEPromptEncoder,
    Sam: InferenceSam,
    # Views made by optimize_for_export() go on to their eager versions.
    ReassociatedAttention: FewTokenAttention,
    TokenLayoutUpscalingMaskDecoder: TokenLayoutMaskDecoder,
}


# The rewrites that are plain tensor algebra (they trace and differentiate): what export may use.
TRACEABLE_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    transformer.Attention: ReassociatedAttention,
    MaskDecoder: TokenLayoutUpscalingMaskDecoder,
}


def _view(module: nn.Module, classes: dict[type[nn.Module], type[nn.Module]], memo: dict[int, nn.Module]) -> nn.Module:
    """The view of ``module`` with the ``classes`` substituted, or ``module`` itself when nothing under
    it has one."""
    if id(module) in memo:  # a module shared within the model stays shared
        return memo[id(module)]
    children = {
        name: _view(child, classes, memo) if child is not None else None for name, child in module._modules.items()
    }
    fast_class = classes.get(type(module))
    if fast_class is None and all(children[n] is c for n, c in module._modules.items()):
        memo[id(module)] = module
        return module
    view = object.__new__(fast_class or type(module))
    # The same _parameters / _buffers dicts (so the same tensors); only the children container is new.
    view.__dict__.update(module.__dict__)
    view.__dict__["_modules"] = children
    view.__dict__["training"] = False
    if isinstance(view, _View):
        view._init_view()
    memo[id(module)] = view
    return view


def optimize_for_inference(sam: ModuleT) -> ModuleT:
    """An inference-only model computing what ``sam`` computes in eval mode, with the CPU fast paths.

    ``sam`` is a :class:`~mobilesam.modeling.Sam` (the result is an :class:`InferenceSam`, a ``Sam``)
    or any part of one (a TinyViT, a MaskDecoder, ...); a module with no fast path in it is returned
    as it is. The result shares every parameter and buffer with ``sam`` (no copy of the weights; see
    the module docstring) and runs under ``torch.no_grad()`` / ``torch.inference_mode()`` only.
    ``sam`` itself is not changed. Optimising an optimised model returns it; a model from
    :func:`optimize_for_export` gets the rest of the fast paths.
    """
    if not isinstance(sam, nn.Module):
        raise TypeError(f"sam: expected a torch Sam module (build_sam(...)), got {type(sam).__name__}")
    return _view(sam, FAST_CLASSES, {})  # type: ignore[return-value]


def optimize_for_export(module: ModuleT) -> ModuleT:
    """``module`` (a Sam or a part of one) with only the rewrites that are plain tensor algebra: the
    re-associated few-token attention and the token-layout output upscaling.

    Same values as the reference, and unlike :func:`optimize_for_inference` it traces (ONNX export)
    and runs under autograd; the weights are shared in the same way. The exported decoder uses it:
    ONNX Runtime runs that graph about twice as fast as the reference one.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch module (a Sam or a part of one), got {type(module).__name__}")
    return _view(module, TRACEABLE_CLASSES, {})  # type: ignore[return-value]
