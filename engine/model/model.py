"""DeepSeek-V2/V3 decoder with Multi-Token Prediction (DeepSeek-V3 §2.1 architecture, §2.2 MTP).

Pre-norm blocks ``h += MLA(norm(h)); h += FFN(norm(h))`` where the FFN is dense for the first
``first_k_dense_replace`` layers and DeepSeekMoE after. The MTP modules sit after the main layers
in ``model.layers`` (checkpoint indices ``num_hidden_layers ..``): each combines the main model's
hidden state with the embedding of the next token, ``eh_proj(cat[enorm(emb), hnorm(h)])``, runs
one more decoder block and predicts with its own ``shared_head``.

Module and parameter names equal the HF checkpoint tensor names, so loading is an identity map.
Under tensor parallelism (``ParallelContext.tp``) the embeddings and heads are vocabulary-parallel
and attention / dense MLPs split as described in their modules; a layer's tensors are the
checkpoint tensors' parts named by each layer's ``shard``.
"""

from __future__ import annotations

import torch
from torch import nn

from dseval.engine.model.attention_metadata import AttentionMetadata
from dseval.engine.model.config import ModelConfig
from dseval.engine.model.linear import Linear
from dseval.engine.model.mla import MLAttention
from dseval.engine.model.moe import MLP, MoE
from dseval.engine.model.norm import RMSNorm
from dseval.engine.model.rope import RotaryEmbedding
from dseval.engine.model.vocab_parallel import VocabParallelEmbedding, VocabParallelHead
from dseval.engine.parallel.context import ParallelContext


class DecoderLayer(nn.Module):
    """One transformer block: MLA then dense MLP or MoE, each pre-normed with a residual."""

    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding, parallel: ParallelContext) -> None:
        super().__init__()
        block = config.quantization.weight_block_size if config.quantization else (128, 128)
        self.self_attn = MLAttention(config, rotary, parallel)
        self.mlp: nn.Module = (
            MoE(config, parallel) if config.is_moe_layer(layer_idx)
            else MLP(config.hidden_size, config.intermediate_size, block, parallel)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, h: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv_cache: torch.Tensor
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), positions, meta, kv_cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class SharedHead(nn.Module):
    """MTP output head: its own final norm and vocabulary projection."""

    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.head = VocabParallelHead(config.hidden_size, config.vocab_size, parallel)


class MTPLayer(DecoderLayer):
    """One MTP module (DeepSeek-V3 §2.2): the projection of [next-token embedding; hidden] then a
    full decoder block. The checkpoint keeps its own copy of the embedding table."""

    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding, parallel: ParallelContext) -> None:
        super().__init__(config, layer_idx, rotary, parallel)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, parallel)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = Linear(2 * config.hidden_size, config.hidden_size)
        self.shared_head = SharedHead(config, parallel)

    def combine(self, next_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """h' = eh_proj(cat[enorm(emb(next)), hnorm(h)]): [T], [T, hidden] -> [T, hidden]."""
        e = self.enorm(self.embed_tokens(next_ids))
        return self.eh_proj(torch.cat([e, self.hnorm(hidden)], dim=-1))  # [T, 2*hidden] -> [T, hidden]


class DeepseekV3Model(nn.Module):
    """Embedding, main decoder layers, MTP layers (same list, after the main ones), final norm."""

    def __init__(self, config: ModelConfig, parallel: ParallelContext) -> None:
        super().__init__()
        self.rotary = RotaryEmbedding(config)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, parallel)
        n = config.num_hidden_layers
        layers: list[nn.Module] = [DecoderLayer(config, i, self.rotary, parallel) for i in range(n)]
        layers += [MTPLayer(config, n + j, self.rotary, parallel) for j in range(config.num_nextn_predict_layers)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DeepseekV3ForCausalLM(nn.Module):
    """The engine's model; see the runtime contract in :mod:`dseval.engine.model.attention_metadata`."""

    def __init__(
        self, config: ModelConfig, parallel: ParallelContext = ParallelContext()  # noqa: B008 (frozen, immutable)
    ) -> None:
        super().__init__()
        self.config = config
        self.parallel = parallel
        self.model = DeepseekV3Model(config, parallel)
        self.lm_head = VocabParallelHead(config.hidden_size, config.vocab_size, parallel)
        self.num_attention_layers = config.num_attention_layers

    @staticmethod
    def kv_cache_row_width(config: ModelConfig) -> int:
        """Values cached per token per layer: the latent c_kv then the rotated k_pe."""
        return config.kv_lora_rank + config.qk_rope_head_dim

    def _check_meta(self, meta: AttentionMetadata, layer: int) -> None:
        if len(meta.kv_caches) <= layer:
            raise ValueError(f"AttentionMetadata.kv_caches has {len(meta.kv_caches)} caches; layer {layer} needs one")

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids [T], positions [T] -> hidden [T, hidden] before the final norm."""
        n = self.config.num_hidden_layers
        self._check_meta(meta, n - 1)
        h = self.model.embed_tokens(input_ids)
        for i in range(n):
            h = self.model.layers[i](h, positions, meta, meta.kv_caches[i])
        return h

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + lm_head: [N, hidden] -> float32 [N, vocab]."""
        return self.lm_head(self.model.norm(hidden)).float()

    def mtp_layer(self, depth: int = 0) -> MTPLayer:
        if not 0 <= depth < self.config.num_nextn_predict_layers:
            raise ValueError(f"model has {self.config.num_nextn_predict_layers} MTP layers; depth {depth} requested")
        layer = self.model.layers[self.config.num_hidden_layers + depth]
        assert isinstance(layer, MTPLayer)
        return layer

    @torch.inference_mode()
    def mtp_forward(self, next_ids: torch.Tensor, positions: torch.Tensor, hidden: torch.Tensor,
                    meta: AttentionMetadata, depth: int = 0) -> torch.Tensor:
        """MTP module ``depth``: (token i+1 ids [T], positions of token i [T], hidden of token i
        [T, hidden]) -> pre-norm MTP hidden [T, hidden]; uses kv_caches[num_hidden_layers + depth]."""
        idx = self.config.num_hidden_layers + depth
        layer = self.mtp_layer(depth)
        self._check_meta(meta, idx)
        h = layer.combine(next_ids, hidden)
        return layer(h, positions, meta, meta.kv_caches[idx])

    @torch.inference_mode()
    def mtp_logits(self, hidden: torch.Tensor, depth: int = 0) -> torch.Tensor:
        """shared_head.norm + shared_head.head: [N, hidden] -> float32 [N, vocab]."""
        head = self.mtp_layer(depth).shared_head
        return head.head(head.norm(hidden)).float()
