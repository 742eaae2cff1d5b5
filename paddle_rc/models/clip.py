"""CLIP vision and text towers.

The vision tower is where compression gets its inputs: one pass yields LLaVA's features F
(hidden_states[feature_layer], CLS dropped), the next layer's q/k projections Q, K (full width,
with bias, before scaling) and that layer's output tokens P (CLS dropped; the projection to the
joint space is applied by the caller, without the post-layernorm). See docs/algorithm.md §1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F_

from paddle_rc.models import fused
from paddle_rc.models.config import CLIPTextConfig, CLIPVisionConfig


def _activation(name: str):
    if name == "quick_gelu":
        return fused.quick_gelu
    if name in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        approximate = name != "gelu"
        return lambda x: F_.gelu(x, approximate=approximate)
    raise ValueError(f"unsupported CLIP activation {name!r}")


class CLIPAttention(nn.Layer):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _heads(self, x):
        # reshape with 0 keeps batch/sequence dims symbolic, so the layer exports with dynamic shapes.
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, x, attn_mask=None, want_qk=False, want_cls_stats=False):
        q_lin = self.q_proj(x)
        k_lin = self.k_proj(x)
        v = self._heads(self.v_proj(x))
        q = self._heads(q_lin) * self.scale
        k = self._heads(k_lin)
        scores = paddle.matmul(q, k, transpose_y=True)
        if attn_mask is not None:
            scores = scores + attn_mask
        probs = fused.softmax(scores)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, q_lin.shape[-1]])
        extras = {}
        if want_qk:
            extras["q"] = q_lin
            extras["k"] = k_lin
        if want_cls_stats:
            # VisionZip's inputs: the CLS row of the real multi-head attention summed over heads,
            # and the keys averaged over heads (both with CLS dropped).
            extras["cls_attn"] = probs[:, :, 0, 1:].sum(axis=1)
            extras["metric"] = k.mean(axis=1)[:, 1:, :]
        return self.out_proj(out), extras


class CLIPMLP(nn.Layer):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act = _activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Layer):
    def __init__(self, hidden_size, intermediate_size, num_heads, eps, act):
        super().__init__()
        self.self_attn = CLIPAttention(hidden_size, num_heads)
        self.layer_norm1 = nn.LayerNorm(hidden_size, epsilon=eps)
        self.mlp = CLIPMLP(hidden_size, intermediate_size, act)
        self.layer_norm2 = nn.LayerNorm(hidden_size, epsilon=eps)

    def forward(self, x, attn_mask=None, want_qk=False, want_cls_stats=False):
        h, extras = self.self_attn(self.layer_norm1(x), attn_mask, want_qk, want_cls_stats)
        x = x + h
        x = x + self.mlp(self.layer_norm2(x))
        return x, extras


class CLIPEncoder(nn.Layer):
    def __init__(self, hidden_size, intermediate_size, num_heads, num_layers, eps, act):
        super().__init__()
        self.layers = nn.LayerList([
            CLIPEncoderLayer(hidden_size, intermediate_size, num_heads, eps, act)
            for _ in range(num_layers)
        ])


class CLIPVisionEmbeddings(nn.Layer):
    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        c = cfg.hidden_size
        self.class_embedding = self.create_parameter([c], default_initializer=nn.initializer.Normal(std=0.02))
        self.patch_embedding = nn.Conv2D(cfg.num_channels, c, cfg.patch_size, stride=cfg.patch_size,
                                         bias_attr=False)
        self.position_embedding = nn.Embedding(cfg.num_patches + 1, c)

    def forward(self, pixel_values):
        patches = self.patch_embedding(pixel_values).flatten(2).transpose([0, 2, 1])  # [B, N, C]
        cls = self.class_embedding.reshape([1, 1, -1]).expand([patches.shape[0], 1, -1])
        x = paddle.concat([cls.astype(patches.dtype), patches], axis=1)
        return x + self.position_embedding.weight.unsqueeze(0)


@dataclass
class VisionFeatures:
    """One tower pass. F [B,N,C]; Q, K [B,1+N,C]; P [B,N,C] (last-layer tokens, not yet projected);
    cls_attn [B,N] and metric [B,N,C/heads] only when asked for (VisionZip)."""
    F: paddle.Tensor
    Q: Optional[paddle.Tensor] = None
    K: Optional[paddle.Tensor] = None
    P: Optional[paddle.Tensor] = None
    cls_attn: Optional[paddle.Tensor] = None
    metric: Optional[paddle.Tensor] = None


class CLIPVisionTower(nn.Layer):
    def __init__(self, cfg: CLIPVisionConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layernorm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)
        self.encoder = CLIPEncoder(cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                                   cfg.num_hidden_layers, cfg.layer_norm_eps, cfg.hidden_act)
        # Unused by LLaVA (and by RC's P, which skips it on purpose); kept so checkpoints round-trip.
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)

    def feature_index(self, feature_layer: int) -> int:
        """Index into hidden_states (0 = embeddings output) of LLaVA's feature layer."""
        n = self.config.num_hidden_layers
        idx = feature_layer if feature_layer >= 0 else n + 1 + feature_layer
        if not 0 <= idx <= n:
            raise ValueError(f"vision_feature_layer {feature_layer} out of range for {n} layers")
        return idx

    def forward(self, pixel_values, feature_layer: int = -2, need_qkp: bool = False,
                need_cls_stats: bool = False) -> VisionFeatures:
        idx = self.feature_index(feature_layer)
        x = self.pre_layernorm(self.embeddings(pixel_values))
        extras = {}
        # Layers past the feature layer are only run when compression needs them: plain LLaVA stops
        # at hidden_states[idx], which is one layer cheaper than running the whole tower.
        for i in range(idx):
            x, extras = self.encoder.layers[i](x, want_cls_stats=need_cls_stats and i == idx - 1)
        out = VisionFeatures(F=x[:, 1:, :], cls_attn=extras.get("cls_attn"), metric=extras.get("metric"))
        if need_qkp:
            if idx >= self.config.num_hidden_layers:
                raise ValueError("compression needs the layer after the feature layer; "
                                 "vision_feature_layer must not be the last layer")
            last, ex = self.encoder.layers[idx](x, want_qk=True)
            out.Q, out.K, out.P = ex["q"], ex["k"], last[:, 1:, :]
        return out


class CLIPTextEmbeddings(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids):
        length = input_ids.shape[1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length].unsqueeze(0)


class CLIPTextTower(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                                   cfg.num_hidden_layers, cfg.layer_norm_eps, cfg.hidden_act)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)

    def forward(self, input_ids):
        """input_ids [B,L] -> last_hidden_state [B,L,Ct] (after the final layernorm, as in CLIP)."""
        x = self.embeddings(input_ids)
        length = input_ids.shape[1]
        # Causal mask only: padding sits after the end-of-text token, which never sees it.
        causal = paddle.triu(paddle.full([length, length], -1e9, dtype=x.dtype), diagonal=1)
        mask = causal.unsqueeze(0).unsqueeze(0)
        for layer in self.encoder.layers:
            x, _ = layer(x, attn_mask=mask)
        return self.final_layer_norm(x)

    def eos_positions(self, input_ids):
        # CLIP's pooling rule: the original configs (eos id 2 in HF's legacy convention) pool at the
        # highest token id; otherwise at the first end-of-text token.
        if self.config.eos_token_id == 2:
            return paddle.argmax(input_ids, axis=-1)
        return paddle.argmax((input_ids == self.config.eos_token_id).astype("int32"), axis=-1)

    def pooled(self, input_ids):
        hidden = self(input_ids)
        pos = self.eos_positions(input_ids)
        return paddle.take_along_axis(hidden, pos.reshape([-1, 1, 1]).expand([-1, 1, hidden.shape[-1]]),
                                      axis=1, broadcast=False).squeeze(1)

