"""Quantizing the project's LLaVA model: the default skip list on the real layer names, and a
quantized checkpoint reloaded by from_pretrained (config.json "quantization" entry)."""
import numpy as np
import paddle
import pytest

from paddle_rc.models import LlavaForConditionalGeneration
from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig
from paddle_rc.models.weights import save_weights
from paddle_rc.quant import QuantConfig, WeightOnlyLinear, quantize_model


def _config():
    return LlavaConfig(
        vision=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, image_size=56, patch_size=14, projection_dim=16),
        text=CLIPTextConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=16, bos_token_id=58,
                            eos_token_id=59, pad_token_id=59),
        llm=LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
        image_token_index=-200, source="demo")


def _model(cfg):
    paddle.seed(0)
    m = LlavaForConditionalGeneration(cfg)
    m.eval()
    return m


def _logits(m):
    paddle.seed(7)
    ids = paddle.to_tensor([[1, 5, -200, 7, 8]], dtype="int64")
    return m(input_ids=ids, pixel_values=paddle.randn([1, 3, 56, 56])).logits.numpy()


@pytest.mark.parametrize("qc,n_quantized", [
    (QuantConfig(weight_bits=8), 2 * 7),
    # + vision 2x6, projector 2, visual/text projections 2, text tower 1x6
    (QuantConfig(weight_bits=4, weight_quantize_type="group_wise_abs_max", group_size=64,
                 quantize_vision=True), 2 * 7 + 12 + 2 + 2 + 6),
])
def test_llava_quantize_save_and_from_pretrained(tmp_path, qc, n_quantized):
    cfg = _config()
    ref = _logits(_model(cfg))
    m = _model(cfg)
    rep = quantize_model(m, qc)
    assert len(rep.quantized) == n_quantized
    assert "lm_head" in rep.skipped and type(m.lm_head) is paddle.nn.Linear
    assert isinstance(m.language_model.layers[1].mlp.down_proj, WeightOnlyLinear)
    assert rep.bytes_after < rep.bytes_before
    out = _logits(m)
    if qc.weight_bits == 8:
        assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()

    cfg.quantization = qc.to_dict()
    cfg.save(str(tmp_path))
    save_weights(m, str(tmp_path))
    loaded = LlavaForConditionalGeneration.from_pretrained(str(tmp_path))
    assert isinstance(loaded.language_model.layers[0].self_attn.k_proj, WeightOnlyLinear)
    np.testing.assert_array_equal(_logits(loaded), out)
    # the text tower deferred (build_predictor does this), then loaded by a method that reads the question;
    # the token-embedding table stays memory-mapped meanwhile
    deferred = LlavaForConditionalGeneration.from_pretrained(str(tmp_path), defer_text=True)
    deferred.set_compression("rc")
    want = loaded.state_dict()
    for k, v in deferred.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), want[k].numpy(), err_msg=k)


def test_a_quantized_lm_head_saves_loads_and_stays_close(tmp_path):
    cfg = _config()
    ref = _logits(_model(cfg))
    m = _model(cfg)
    qc = QuantConfig.preset("int8-head")
    rep = quantize_model(m, qc)
    assert "lm_head" in rep.quantized and isinstance(m.lm_head, WeightOnlyLinear)
    out = _logits(m)
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    cfg.quantization = qc.to_dict()
    cfg.save(str(tmp_path))
    save_weights(m, str(tmp_path))
    loaded = LlavaForConditionalGeneration.from_pretrained(str(tmp_path))
    assert isinstance(loaded.lm_head, WeightOnlyLinear)
    np.testing.assert_array_equal(_logits(loaded), out)
