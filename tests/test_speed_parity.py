"""The CPU fast paths give the plain computation's results, and weights changed later still take effect.

(End-to-end parity with the official code is tests/test_parity.py; these isolate each fast path.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

from mobilesam.modeling import build_model
from mobilesam.modeling.tiny_vit import Conv2d_BN, MBConv
from mobilesam.modeling.transformer import Attention
from mobilesam.predictor import SamPredictor


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def _plain_conv_bn(m: Conv2d_BN, x: torch.Tensor) -> torch.Tensor:
    c, bn = m.c, m.bn
    y = F.conv2d(x, c.weight, None, c.stride, c.padding, c.dilation, c.groups)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_folded_batchnorm_follows_weight_changes() -> None:
    torch.manual_seed(0)
    m = Conv2d_BN(8, 16, 3, 1, 1).eval()
    _randomise_bn(m, 1)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = m(x)
        assert torch.allclose(first, _plain_conv_bn(m, x), atol=1e-5)
        # Loaded after the first (folded, cached) call: must take effect.
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        sd["bn.running_var"] = sd["bn.running_var"] * 3.0
        sd["c.weight"] = -sd["c.weight"]
        m.load_state_dict(sd)
        second = m(x)
        assert torch.allclose(second, _plain_conv_bn(m, x), atol=1e-5)
        assert not torch.allclose(first, second, atol=1e-2)
        m.bn.eps = 0.5  # eps is part of the key too
        assert torch.allclose(m(x), _plain_conv_bn(m, x), atol=1e-5)
    # Training mode and autograd use the plain modules (batch statistics, gradients).
    m.train()
    y = m(x)
    assert y.requires_grad
    y.sum().backward()
    assert m.bn.weight.grad is not None and m.c.weight.grad is not None


def test_fused_convolutions_match_plain_ops() -> None:
    torch.manual_seed(1)
    block = MBConv(16, 4.0).eval()
    _randomise_bn(block, 2)
    x = torch.randn(1, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = block(x)
        c1, c2, c3 = block.conv1, block.conv2, block.conv3
        plain = F.gelu(_plain_conv_bn(c3, F.gelu(_plain_conv_bn(c2, F.gelu(_plain_conv_bn(c1, x))))) + x)
    assert torch.allclose(fast, plain, atol=1e-5), (fast - plain).abs().max()


def _standard_attention(attn: Attention, q, k, v) -> torch.Tensor:
    qh, kh, vh = attn._heads(attn.q_proj(q)), attn._heads(attn.k_proj(k)), attn._heads(attn.v_proj(v))
    out = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1) @ vh
    b, _, n, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, attn.internal_dim))


def test_reassociated_cross_attention_matches_standard() -> None:
    torch.manual_seed(2)
    attn = Attention(256, 8, downsample_rate=2).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        tokens, image = torch.randn(3, 7, 256), torch.randn(3, 4096, 256)
        for q, k, v in ((tokens, image, image), (image, tokens, tokens)):  # few queries / few keys
            got, ref = attn(q, k, v), _standard_attention(attn, q, k, v)
            assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
        many = torch.randn(2, 40, 256)  # too many tokens: the standard path
        assert torch.allclose(attn(many, image[:2], image[:2]), _standard_attention(attn, many, image[:2], image[:2]),
                              atol=1e-4)


def test_separable_postprocessing_matches_official_resizes() -> None:
    sam = build_model("vit_t")
    low = torch.randn(2, 3, 256, 256) * 4
    for input_size, original in (((683, 1024), (853, 1280)), ((1024, 456), (1500, 668)), ((19, 1024), (7, 377))):
        ref = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
        ref = F.interpolate(ref[..., : input_size[0], : input_size[1]], original, mode="bilinear", align_corners=False)
        got = sam.postprocess_masks(low, input_size, original)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-4


def test_dense_pe_cache_follows_the_buffer() -> None:
    sam = build_model("vit_t")
    pe = sam.prompt_encoder
    first = pe.get_dense_pe().clone()
    assert torch.equal(first, pe.pe_layer(pe.image_embedding_size).unsqueeze(0))
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    second = pe.get_dense_pe()
    assert torch.allclose(second, pe.pe_layer(pe.image_embedding_size).unsqueeze(0))
    assert not torch.allclose(first, second)


def test_chunked_batches_equal_one_pass() -> None:
    sam = build_model("vit_t")
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))
    whole, chunked = SamPredictor(sam, max_batch=64), SamPredictor(sam, max_batch=3)
    for p in (whole, chunked):
        p.set_embedding(emb, (90, 120))
    coords = torch.rand(8, 2, 2, generator=torch.Generator().manual_seed(5)) * 1000
    labels = torch.ones(8, 2, dtype=torch.int)
    a = whole.predict_torch(coords, labels)
    b = chunked.predict_torch(coords, labels)
    assert a[0].shape == b[0].shape == (8, 3, 90, 120) and a[0].dtype == b[0].dtype == torch.bool
    assert torch.allclose(a[2], b[2], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    diff = a[0] != b[0]
    assert not (diff & (whole.predict_torch(coords, labels, return_logits=True)[0].abs() > 1e-3)).any()


def test_allocator_tuning_opt_out() -> None:
    code = (
        "import mobilesam.predictor as p; from mobilesam.modeling import build_model;"
        "p.SamPredictor(build_model('vit_t')); print(p._MALLOC_TUNED)"
    )
    out = {}
    for value in ("1", "0"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**__import__("os").environ, "MOBILESAM_MALLOC_TUNING": value})
        assert proc.returncode == 0, proc.stderr
        out[value] = proc.stdout.strip()
    assert out["0"] == "False"
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert out["1"] == "True"


def test_bf16_autocast_encoder_runs_close() -> None:
    """The reduced-precision path (bf16 autocast on CPU, fused bf16 convolutions) stays close to fp32."""
    sam = build_model("vit_t")
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    enc = sam.image_encoder.patch_embed
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(x)
    assert low.dtype == torch.bfloat16
    err = ((low.float() - ref).abs().max() / ref.abs().max()).item()
    assert 0 < err < 0.05, err
    assert np.isfinite(low.float().numpy()).all()


def test_decoder_trains_through_our_modules() -> None:
    """The inference shortcuts (in-place softmax, out= buffers) must not break autograd: the decoder
    can be fine-tuned, and its gradients match the official decoder's."""
    from oracle import reference_model

    from mobilesam.modeling import build_model

    ref = reference_model("vit_t", seed=2)
    ours = build_model("vit_t")
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 256, 64, 64, generator=g)
    pts = torch.rand(2, 3, 2, generator=g) * 1024
    labels = torch.tensor([[1, 0, 1], [1, 1, 0]])
    grads = []
    for model in (ref, ours):
        model.zero_grad()
        sparse, dense = model.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
        masks, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
        (masks.square().mean() + iou.sum()).backward()
        grads.append(model.mask_decoder.output_hypernetworks_mlps[1].layers[0].weight.grad.clone())
    assert grads[1].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()
