"""The optimised inference model (``optimize_for_inference``) computes what the reference model computes,
shares its weights, and follows weights changed later.

(End-to-end parity of the reference with the official code is tests/test_parity.py; here each fast
path is compared with the reference ``mobilesam.modeling`` on its own, then the whole model.)
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import reference_and_ours
from oracle import perturb_

from mobilesam.backends import torch_fast
from mobilesam.backends.torch_fast import InferenceSam, optimize_for_export, optimize_for_inference
from mobilesam.modeling import MODEL_CONFIGS, Sam, TinyViT, build_model
from mobilesam.modeling.configs import build_image_encoder
from mobilesam.modeling.tiny_vit import Conv2d_BN, MBConv
from mobilesam.modeling.transformer import Attention
from mobilesam.predictor import SamPredictor

EMB_RTOL = 1e-4  # encoder: max abs difference relative to the embedding's max abs value
BF16_RTOL = 0.05  # the same under bfloat16 autocast
LOGIT_ATOL = 1e-4  # decoder: low-res and full-size logits, IoU predictions


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


def _rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def _small_tinyvit(seed: int) -> TinyViT:
    """MobileSAM's TinyViT at 256 x 256 (every stage, window padding included), perturbed weights."""
    torch.manual_seed(seed)
    enc = build_image_encoder(MODEL_CONFIGS["vit_t"], 256).eval()
    perturb_(enc, seed)
    return enc


def _decode(model: Sam, emb: torch.Tensor, prompts: dict, multimask: bool) -> tuple[torch.Tensor, ...]:
    """Low-res logits, IoU predictions and full-size logits, as the predictor computes them."""
    sparse, dense = model.prompt_encoder(**prompts)
    low, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
    return low, iou, model.postprocess_masks(low, (683, 1024), (853, 1280))


def _prompt_batches(seed: int) -> dict[str, dict]:
    """Batches of 5 prompts: points with a negative, boxes, boxes + points + mask inputs, 40 points."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(5, 3, 2, generator=g) * 1000
    labels = torch.tensor([[1, 0, 1]] * 5)
    boxes = torch.rand(5, 4, generator=g) * 500
    boxes[:, 2:] += boxes[:, :2]
    masks = torch.randn(5, 1, 256, 256, generator=g) * 4
    many = torch.rand(2, 40, 2, generator=g) * 1000  # more tokens than the re-associated paths take
    return {
        "points": dict(points=(pts, labels), boxes=None, masks=None),
        "boxes": dict(points=None, boxes=boxes, masks=None),
        "boxes_points_masks": dict(points=(pts, labels), boxes=boxes, masks=masks),
        "many_points": dict(points=(many, torch.ones(2, 40, dtype=torch.int)), boxes=None, masks=None),
    }


def _assert_decoding_matches(ref: Sam, fast: Sam, emb: torch.Tensor, seed: int) -> None:
    with torch.no_grad():
        for name, prompts in _prompt_batches(seed).items():
            for multimask in (True, False):
                for what, got, want in zip(("low-res", "iou", "full"), _decode(fast, emb, prompts, multimask),
                                           _decode(ref, emb, prompts, multimask)):
                    assert got.shape == want.shape, (name, what)
                    diff = (got - want).abs().max().item()
                    assert diff <= LOGIT_ATOL, f"{name}/multimask={multimask} {what}: max abs diff {diff:.3g}"


@pytest.fixture(scope="module")
def vit_t() -> Sam:
    """Ours with the perturbed official vit_t weights (shared with the parity tests: never modified here)."""
    return reference_and_ours("vit_t")[1]


@pytest.fixture(scope="module")
def embedding() -> torch.Tensor:
    return torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))


def test_optimised_model_shares_every_weight(vit_t) -> None:
    fast = optimize_for_inference(vit_t)
    assert isinstance(fast, Sam) and isinstance(fast, InferenceSam) and type(vit_t) is Sam
    assert isinstance(fast.image_encoder, TinyViT) and fast is not vit_t
    for a, b in ((vit_t.state_dict(keep_vars=True), fast.state_dict(keep_vars=True)),
                 (dict(vit_t.named_parameters()), dict(fast.named_parameters())),
                 (dict(vit_t.named_buffers()), dict(fast.named_buffers()))):
        assert a.keys() == b.keys() and a
        assert all(a[k] is b[k] for k in a), [k for k in a if a[k] is not b[k]][:3]
    # The reference is not changed: same classes, its own modules.
    assert type(vit_t.mask_decoder).__module__ == "mobilesam.modeling.mask_decoder"
    assert all(type(m).__module__.startswith("mobilesam.modeling") or type(m).__module__.startswith("torch")
               for m in vit_t.modules())
    assert optimize_for_inference(fast) is fast
    with pytest.raises(RuntimeError, match="inference-only"):
        fast.train()
    assert fast.eval() is fast
    with pytest.raises(TypeError, match="sam: expected a torch Sam module"):
        optimize_for_inference("mobile_sam.pt")


def test_vit_encoder_is_shared_and_decoding_matches(embedding) -> None:
    """ViT encoders have no fast path: the optimised model runs the reference's own encoder module."""
    sam = build_model("vit_b")
    perturb_(sam.mask_decoder, 3)
    fast = optimize_for_inference(sam)
    assert fast.image_encoder is sam.image_encoder
    _assert_decoding_matches(sam, fast, embedding, seed=5)


def test_encoder_matches_reference(vit_t) -> None:
    fast = optimize_for_inference(vit_t)
    x = vit_t.preprocess(torch.rand(1, 3, 1024, 768, generator=torch.Generator().manual_seed(2)) * 255)
    with torch.no_grad():
        ref, got = vit_t.image_encoder(x), fast.image_encoder(x)
    assert got.shape == ref.shape == (1, 256, 64, 64)
    assert _rel_diff(got, ref) <= EMB_RTOL


def test_decoding_matches_reference(vit_t, embedding) -> None:
    """Batches of points, boxes, boxes + points + masks, many points; single and multimask outputs."""
    _assert_decoding_matches(vit_t, optimize_for_inference(vit_t), embedding, seed=6)


def test_official_batched_forward_matches_reference(vit_t) -> None:
    g = torch.Generator().manual_seed(7)
    records = [{
        "image": torch.rand(3, 683, 1024, generator=g) * 255,
        "original_size": (853, 1280),
        "point_coords": torch.rand(2, 2, 2, generator=g) * 600,
        "point_labels": torch.tensor([[1, 0], [1, 1]]),
        "boxes": torch.tensor([[10.0, 20.0, 500.0, 400.0], [100.0, 50.0, 900.0, 600.0]]),
    }]
    ref = vit_t(records, multimask_output=True)[0]
    got = optimize_for_inference(vit_t)(records, multimask_output=True)[0]
    assert (got["low_res_logits"] - ref["low_res_logits"]).abs().max() <= LOGIT_ATOL
    assert (got["iou_predictions"] - ref["iou_predictions"]).abs().max() <= LOGIT_ATOL
    assert got["masks"].shape == ref["masks"].shape == (2, 3, 853, 1280)
    # Thresholded masks may differ only where the logit is within rounding of the threshold.
    near = vit_t.postprocess_masks(ref["low_res_logits"], (683, 1024), (853, 1280)).abs() <= 1e-3
    assert not ((got["masks"] != ref["masks"]) & ~near).any()


def test_export_rewrites_match_and_differentiate(embedding) -> None:
    """optimize_for_export (what the ONNX decoder is traced from): only the algebraic rewrites, same
    values, gradients as the reference's; optimize_for_inference then adds the eager fast paths."""
    sam = build_model("vit_t")
    perturb_(sam.mask_decoder, 18)
    exp = optimize_for_export(sam)
    assert type(exp) is Sam and exp.image_encoder is sam.image_encoder and exp.prompt_encoder is sam.prompt_encoder
    attn = exp.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    assert isinstance(attn, torch_fast.ReassociatedAttention)
    _assert_decoding_matches(sam, exp, embedding, seed=19)
    prompts = _prompt_batches(20)["points"]
    grads = []
    for model in (sam, exp):
        sam.zero_grad()
        low, iou, _ = _decode(model, embedding, prompts, True)
        (low.square().mean() + iou.sum()).backward()
        grads.append(sam.mask_decoder.transformer.layers[1].cross_attn_image_to_token.q_proj.weight.grad.clone())
    assert grads[0].abs().max() > 0 and (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()
    fast = optimize_for_inference(exp)
    assert isinstance(fast, InferenceSam) and type(fast.mask_decoder) is torch_fast.TokenLayoutMaskDecoder
    assert type(fast.mask_decoder.transformer.layers[0].self_attn) is torch_fast.FewTokenAttention


def test_weights_loaded_into_the_reference_later_take_effect(embedding) -> None:
    """After optimising, load_state_dict on the reference (in place, same tensors) reaches the optimised
    model: folded BatchNorms and the cached positional encoding are recomputed."""
    sam = build_model("vit_t")
    sam.image_encoder = _small_tinyvit(seed=8)
    fast = optimize_for_inference(sam)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        before = fast.image_encoder(x), _decode(fast, embedding, _prompt_batches(10)["points"], True)[0]
    new = build_model("vit_t")
    new.image_encoder = _small_tinyvit(seed=11)
    perturb_(new.prompt_encoder, 12)
    perturb_(new.mask_decoder, 13)
    sam.load_state_dict(new.state_dict())
    with torch.no_grad():
        ref = sam.image_encoder(x), _decode(sam, embedding, _prompt_batches(10)["points"], True)[0]
        after = fast.image_encoder(x), _decode(fast, embedding, _prompt_batches(10)["points"], True)[0]
    assert _rel_diff(after[0], ref[0]) <= EMB_RTOL
    assert (after[1] - ref[1]).abs().max() <= LOGIT_ATOL
    assert _rel_diff(before[0], ref[0]) > 0.1 and (before[1] - ref[1]).abs().max() > 0.1


def test_folded_batchnorm_follows_weight_changes() -> None:
    torch.manual_seed(0)
    m = Conv2d_BN(8, 16, 3, 1, 1).eval()
    _randomise_bn(m, 1)
    fast = optimize_for_inference(m)
    assert isinstance(fast, Conv2d_BN) and fast.c is m.c and fast.bn is m.bn
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = fast(x)
        assert torch.allclose(first, _plain_conv_bn(m, x), atol=1e-5)
        assert torch.allclose(first, m(x), atol=1e-5)
        # Loaded into the reference after the first (folded, cached) call: must take effect.
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        sd["bn.running_var"] = sd["bn.running_var"] * 3.0
        sd["c.weight"] = -sd["c.weight"]
        m.load_state_dict(sd)
        second = fast(x)
        assert torch.allclose(second, _plain_conv_bn(m, x), atol=1e-5)
        assert not torch.allclose(first, second, atol=1e-2)
        m.bn.eps = 0.5  # eps is part of the key too
        assert torch.allclose(fast(x), _plain_conv_bn(m, x), atol=1e-5)
    # Training mode and autograd use the reference (batch statistics, gradients); the optimised
    # module refuses autograd instead of returning wrong gradients.
    m.train()
    y = m(x)
    assert y.requires_grad
    y.sum().backward()
    assert m.bn.weight.grad is not None and m.c.weight.grad is not None
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        fast(x)


def test_fused_convolutions_match_plain_ops() -> None:
    torch.manual_seed(1)
    block = MBConv(16, 4.0).eval()
    _randomise_bn(block, 2)
    fast = optimize_for_inference(block)
    x = torch.randn(1, 16, 20, 20).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = fast(x)
        c1, c2, c3 = block.conv1, block.conv2, block.conv3
        plain = F.gelu(_plain_conv_bn(c3, F.gelu(_plain_conv_bn(c2, F.gelu(_plain_conv_bn(c1, x))))) + x)
        ref = block(x)
    assert torch.allclose(got, plain, atol=1e-5), (got - plain).abs().max()
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


def _standard_attention(attn: Attention, q, k, v) -> torch.Tensor:
    qh, kh, vh = attn._heads(attn.q_proj(q)), attn._heads(attn.k_proj(k)), attn._heads(attn.v_proj(v))
    out = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1) @ vh
    b, _, n, _ = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, attn.internal_dim))


def test_reassociated_cross_attention_matches_standard() -> None:
    torch.manual_seed(2)
    attn = Attention(256, 8, downsample_rate=2).eval()
    fast = optimize_for_inference(attn)
    with torch.no_grad():
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        tokens, image = torch.randn(3, 7, 256), torch.randn(3, 4096, 256)
        for q, k, v in ((tokens, image, image), (image, tokens, tokens)):  # few queries / few keys
            got, ref = fast(q, k, v), _standard_attention(attn, q, k, v)
            assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
            assert torch.allclose(got, attn(q, k, v), atol=1e-4)
        many = torch.randn(2, 40, 256)  # too many tokens: the standard path
        assert torch.allclose(fast(many, image[:2], image[:2]), _standard_attention(attn, many, image[:2], image[:2]),
                              atol=1e-4)


def test_separable_postprocessing_matches_official_resizes(vit_t) -> None:
    fast = optimize_for_inference(vit_t)
    low = torch.randn(2, 3, 256, 256) * 4
    for input_size, original in (((683, 1024), (853, 1280)), ((1024, 456), (1500, 668)), ((19, 1024), (7, 377))):
        ref = F.interpolate(low, (1024, 1024), mode="bilinear", align_corners=False)
        ref = F.interpolate(ref[..., : input_size[0], : input_size[1]], original, mode="bilinear", align_corners=False)
        got = fast.postprocess_masks(low, input_size, original)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-4
        assert torch.equal(vit_t.postprocess_masks(low, input_size, original), ref)  # the reference is the official


def test_dense_pe_cache_follows_the_buffer() -> None:
    sam = build_model("vit_t")
    pe = sam.prompt_encoder
    fast = optimize_for_inference(sam).prompt_encoder
    first = fast.get_dense_pe().clone()
    assert torch.equal(first, pe.get_dense_pe())
    with torch.no_grad():
        pe.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    second = fast.get_dense_pe()
    assert torch.allclose(second, pe.get_dense_pe())
    assert not torch.allclose(first, second)


def test_bf16_autocast_encoder_runs_close() -> None:
    """The reduced-precision path (bf16 autocast on CPU, fused bf16 convolutions) stays close to fp32,
    and to the reference under the same autocast."""
    sam = build_model("vit_t")
    fast = optimize_for_inference(sam)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref = sam.image_encoder.patch_embed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast.image_encoder.patch_embed(x)
            ref_low = sam.image_encoder.patch_embed(x)
    assert low.dtype == torch.bfloat16
    err = _rel_diff(low, ref)
    assert 0 < err < BF16_RTOL, err
    assert _rel_diff(low, ref_low) < BF16_RTOL
    assert np.isfinite(low.float().numpy()).all()


def test_bf16_autocast_whole_encoder_matches_reference() -> None:
    enc = _small_tinyvit(seed=14)
    fast = optimize_for_inference(enc)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, ref_low = fast(x), enc(x)
    assert _rel_diff(got, ref) < BF16_RTOL and _rel_diff(got, ref_low) < BF16_RTOL


def test_parity_checks_can_fail(vit_t, embedding, monkeypatch) -> None:
    """A fast path that is subtly wrong (the weights are shared, so the break is in the fast code) fails
    the same checks as above."""
    enc = _small_tinyvit(seed=16)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(17))
    with torch.no_grad():
        ref = enc(x)
    folded = torch_fast.FoldedConv2d_BN.folded

    def stale_mean(self, dtype=None):  # folds as if the running mean were zero
        weight, bias = folded(self, dtype)
        bn = self.bn
        return weight, bias + (bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).to(bias.dtype)

    monkeypatch.setattr(torch_fast.FoldedConv2d_BN, "folded", stale_mean)
    with torch.no_grad():
        assert _rel_diff(optimize_for_inference(enc)(x), ref) > EMB_RTOL
    monkeypatch.undo()

    # Drop the output projection's bias on the few-keys path (image tokens attending to the prompts).
    few_keys = torch_fast.FewTokenAttention._few_keys
    monkeypatch.setattr(torch_fast.FewTokenAttention, "_few_keys",
                        lambda self, q, k, v: few_keys(self, q, k, v) - self.out_proj.bias)
    with pytest.raises(AssertionError, match="max abs diff"):
        _assert_decoding_matches(vit_t, optimize_for_inference(vit_t), embedding, seed=6)


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
    code = "import mobilesam.allocator as a; a.tune_allocator(); print(a.allocator_tuned())"
    out = {}
    for value in ("1", "0"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**__import__("os").environ, "MOBILESAM_MALLOC_TUNING": value})
        assert proc.returncode == 0, proc.stderr
        out[value] = proc.stdout.strip()
    assert out["0"] == "False"
    if sys.platform.startswith("linux") and "glibc" in " ".join(__import__("platform").libc_ver()):
        assert out["1"] == "True"


def test_decoder_trains_through_our_modules() -> None:
    """Training runs the reference modules: the decoder can be fine-tuned, its gradients match the
    official decoder's, and the optimised model refuses autograd with a clear error."""
    from oracle import reference_model

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
    fast = optimize_for_inference(ours)
    sparse, dense = fast.prompt_encoder(points=(pts, labels), boxes=None, masks=None)
    with pytest.raises(RuntimeError, match="use the reference model"):
        fast.mask_decoder(emb, fast.prompt_encoder.get_dense_pe(), sparse, dense, True)
