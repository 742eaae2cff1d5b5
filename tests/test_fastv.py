"""FastV inside the LLM against a transcription of the authors' KV-cache version on transformers'
LLaMA layers, and the exported prefill/decode graphs against the dynamic model.

Reference followed: pkunlp-icler/FastV @ 49dfad77a3de281fb7f6b8db70c3687186289177,
src/FastV/lmms-eval-with-kvcache/fastv_kvcache.py (FastVLlamaModel.forward): at layer K the
attention of the last position in layer K-1, averaged over heads, ranks the image positions; the
top T stay, together with every other position, at their original position ids; layers from K on
run (and cache) only those; decoding then attends to each layer's own cache.
"""
import os
import shutil

import numpy as np
import paddle
import pytest
import torch

from conftest import tiny_llava_model

LAYERS, K = 4, 2


def _model():
    return tiny_llava_model(llm_layers=LAYERS, seed=3)


@pytest.fixture(scope="module")
def model_and_hf():
    """Our model with its LLM weights copied into transformers' LlamaForCausalLM (eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model = _model()
    c = model.config.llm
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps,
                         rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
                         attn_implementation="eager")
    hf = LlamaForCausalLM(hf_cfg).eval()
    state = {}
    for name, p in model.language_model.named_parameters():
        w = p.numpy()
        if w.ndim == 2 and "embed_tokens" not in name:
            w = w.T  # paddle Linear stores [in, out]
        state["model." + name] = torch.tensor(w)
    state["lm_head.weight"] = torch.tensor(model.lm_head.weight.numpy().T)
    missing, _ = hf.load_state_dict(state, strict=False)
    assert not [m for m in missing if "rotary" not in m], missing
    return model, hf


def _causal(n):
    m = torch.full((n, n), float("-inf")).triu(1)
    return m[None, None]


@torch.no_grad()
def fastv_reference(hf, embeds, start, n_img, keep, steps):
    """Greedy tokens and the kept positions of FastV (KV-cache version) on transformers' layers,
    batch 1, no padding."""
    from transformers import DynamicCache

    lm = hf.model
    h = torch.tensor(embeds)
    seq = h.shape[1]
    pos = torch.arange(seq)[None]
    mask = _causal(seq)
    cache = DynamicCache()
    last_attention = kept = None
    for idx, layer in enumerate(lm.layers):
        if idx == K:
            score = last_attention.mean(dim=1)[0][-1][start:start + n_img]
            top = score.topk(keep).indices + start
            kept = torch.cat((torch.arange(start), top, torch.arange(start + n_img, seq))).sort().values
            h = h[:, kept]
            pos = kept[None]
            mask = _causal(len(kept))
        pe = lm.rotary_emb(h, pos)
        if idx == K - 1:
            last_attention = layer.self_attn(layer.input_layernorm(h), pe, mask)[1]
        h = layer(h, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                  position_embeddings=pe)
    tokens = [int(hf.lm_head(lm.norm(h))[0, -1].argmax())]
    for step in range(steps - 1):
        h = lm.embed_tokens(torch.tensor([[tokens[-1]]]))
        p = torch.tensor([[seq + step]])
        pe = lm.rotary_emb(h, p)
        for layer in lm.layers:
            h = layer(h, attention_mask=None, position_ids=p, past_key_values=cache, use_cache=True,
                      position_embeddings=pe)
        tokens.append(int(hf.lm_head(lm.norm(h))[0, -1].argmax()))
    return tokens, kept.numpy()


@pytest.mark.parametrize("budget,seed", [(5, 0), (None, 1), (3, 2)])
def test_fastv_equals_the_authors_kv_cache_version(model_and_hf, budget, seed):
    model, hf = model_and_hf
    rng = np.random.default_rng(seed)
    before, after = 4 + seed, 6
    ids = [1] + list(rng.integers(3, 90, size=before)) + [-200] + list(rng.integers(3, 90, size=after))
    px = paddle.to_tensor(rng.standard_normal((1, 3, 56, 56)).astype("float32"))
    model.set_compression("fastv", budget)
    n = model.config.vision.num_patches
    keep = budget or n // 2
    with paddle.no_grad():
        gen = model.generate(paddle.to_tensor([ids]), px, max_new_tokens=6, eos_token_id=-1)
        visual = model.encode_images(px)
        embeds, _, _ = model.splice(paddle.to_tensor([ids]), None, visual)
    tokens, kept = fastv_reference(hf, embeds.numpy(), 1 + before, n, keep, 6)
    assert gen.tokens[0].tolist() == tokens
    # the kept patches are the reference's kept image positions
    want = sorted(int(p) - (1 + before) for p in kept if 1 + before <= p < 1 + before + n)
    assert gen.visual.result.samples[0].visual == want
    assert gen.visual.kept_in_llm == keep == len(want)
    # the recorded per-row patch indices (what --save-vis draws) are the reference's top-R of the
    # last position's attention in layer K-1
    assert gen.visual.result.llm_kept[0].tolist() == want
    assert gen.visual.result.llm_layer == K


def test_fastv_batch_with_padding_equals_each_alone():
    model = _model()
    model.set_compression("fastv", 4)
    rng = np.random.default_rng(5)
    rows = [[1, 5, 6, -200, 7, 8], [1, 9, 9, 4, 4, 5, 6, -200, 7]]
    px = paddle.to_tensor(rng.standard_normal((2, 3, 56, 56)).astype("float32"))
    from paddle_rc.data.padding import left_pad

    ids, mask = left_pad(rows, 0)
    both = model.generate(paddle.to_tensor(ids), px, paddle.to_tensor(mask), max_new_tokens=5, eos_token_id=-1)
    for b, r in enumerate(rows):
        alone = model.generate(paddle.to_tensor([r]), px[b:b + 1], max_new_tokens=5, eos_token_id=-1)
        assert both.tokens[b].tolist() == alone.tokens[0].tolist()
        assert both.visual.result.samples[b].visual == alone.visual.result.samples[0].visual


def test_fastv_layer_option_is_checked():
    from paddle_rc.errors import UserError

    model = _model()
    for bad in (LAYERS, 0, 1.5):
        with pytest.raises(UserError, match="layer"):
            model.set_compression("fastv", None, layer=bad)
    # the default K = 2 is capped for an LLM of 2 layers (the tests' tiny one): it prunes after layer 1
    shallow = tiny_llava_model()
    shallow.set_compression("fastv")
    assert shallow._llm_method()[2] == 1
    with pytest.raises(ValueError, match="inside the LLM"):
        from paddle_rc.compression import compress

        compress("fastv", paddle.zeros([1, 4, 2]), None, None)


def test_predictor_answers_prune_like_generate():
    """The pipeline's answers (tools/infer.py, eval, the server: Predictor.start + DecodeBatch)
    run FastV's pruning as model.generate does, and report its kept count."""
    from paddle_rc.demo import demo_image
    from paddle_rc.pipeline import until_eos
    from paddle_rc.predictor import build_predictor

    pred = build_predictor(method="fastv", budget=5)
    questions = ["What color is the car?", "Describe the picture in every detail you can see."]
    images = [demo_image(), demo_image().rotate(90)]
    outs = pred.answer_batch(images, questions, max_new_tokens=6)
    for im, q, out in zip(images, questions, outs):
        ids, mask = pred.encode_prompts([pred.build_prompt(q)])
        pixels = paddle.to_tensor(pred.processor([im]))
        with paddle.no_grad():
            gen = pred.model.generate(ids, pixels, mask, max_new_tokens=6, eos_token_id=pred.tok.llm.eos_token_id)
        assert out["text"] == pred.tok.llm.decode(until_eos(gen.tokens[0], pred.tok.llm.eos_token_id)).strip()
        assert out["visual_tokens"] == gen.visual.kept_in_llm == 5
        assert out["stage_counts"]["visual"] == 5
