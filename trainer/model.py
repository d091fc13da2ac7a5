"""Decoder-only transformers: GPT-2 and LLaMA (dense or mixture of experts) in one file.

Module names mirror Hugging Face `GPT2LMHeadModel`, `LlamaForCausalLM` and
`MixtralForCausalLM`, so exporting is a key-for-key copy (plus a transpose for GPT-2, whose
Conv1D stores weights as (in, out) where nn.Linear stores (out, in), and a split of the
stacked expert weights into Mixtral's one tensor per expert).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainer.config import ModelConfig
from trainer.moe import RouterStats, SparseMoE, router_stats

IGNORE_INDEX = -100  # a target that carries no loss (F.cross_entropy's default)


def _dropout(p: float) -> nn.Module:
    # nn.Dropout(0.0) still draws and applies a mask in training mode on the CPU, which
    # cost about 15% of a small model's step; with no dropout there is nothing to apply.
    return nn.Dropout(p) if p > 0 else nn.Identity()


# ---------------------------------------------------------------------------- attention


class KVCache:
    """Keys and values of the positions seen so far, per layer, for incremental decoding."""

    def __init__(
        self, cfg: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.n_layer, self.batch, self.seq_len = cfg.n_layer, batch, cfg.seq_len
        self.device, self.dtype = device, dtype
        self.k = self.v = torch.empty(0)  # allocated by the first update
        self.pos = 0  # positions filled; the next token's position

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nkv, T, hs) keys and values at the current position; return all so far."""
        if not self.k.numel():
            # Preallocated to the full context: decoding writes one position per step in
            # place. nkv is the heads this rank computes: all of them, or its share of them
            # under tensor parallelism.
            _, heads, _, head_dim = k.shape
            shape = (self.n_layer, self.batch, heads, self.seq_len, head_dim)
            self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nkv, P+T, hs)


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) attention mask for packed rows: earlier keys of the same document only."""
    T = doc_ids.shape[1]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same & causal).unsqueeze(1)  # broadcast over heads


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SDPA where query i (the last T of S positions) sees keys up to its own position.

    A mask from document_mask replaces the plain causal one for packed examples.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # The CPU's bf16 attention backward is several times slower than its fp32 one
        # (bench/RESULTS.md, "bf16 attention on the CPU"), so attention runs in fp32 there
        # and the matrix products around it stay bf16. Forward passes without a backward
        # do the same, though bf16 would be a little faster for them: a model computes
        # alike with and without gradients (a DPO reference equals its policy at the
        # start). Autocast would cast it back to bf16.
        with torch.autocast("cpu", enabled=False):
            out = _attention(q.float(), k.float(), v.float(), dropout_p, mask)
        return out.to(q.dtype)
    return _attention(q, k, v, dropout_p, mask)


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    T, S = q.shape[-2], k.shape[-2]
    if T == S:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if T == 1:  # one new token after a cached prefix sees every key: no mask needed
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    # SDPA's is_causal aligns the mask to the top-left, which is wrong once keys include
    # a cached prefix; shift the diagonal by the prefix length instead.
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


# ---------------------------------------------------------------------------- GPT-2 parts


class GPT2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v fused as in HF
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = _dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, -1).transpose(1, 2)
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, P+T, hs)
        p = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, p, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, cfg.ff_dim)
        self.c_proj = nn.Linear(cfg.ff_dim, cfg.d_model)
        self.dropout = _dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The tanh approximation is HF's "gelu_new", which GPT-2 was trained with.
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class GPT2Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = GPT2MLP(cfg)
        self.checkpointing = False

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Checkpointing inside the block keeps FSDP's gather hooks and torch.compile's graph
        # boundary outside the recomputed region (the order torchtitan applies them in).
        if self.checkpointing and self.training and cache is None:
            out: torch.Tensor = checkpoint(self._forward, x, None, mask, use_reentrant=False)
            return out
        return self._forward(x, cache, mask)

    def _forward(
        self, x: torch.Tensor, cache: KVCache | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, mask)
        return x + self.mlp(self.ln_2(x))


# ---------------------------------------------------------------------------- LLaMA parts


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 even under bf16 autocast, as HF does, for a stable mean square.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cache(head_dim: int, seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotary embeddings, each (T, hs)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    # HF LLaMA rotates the two halves of each head (not interleaved pairs), so the tables
    # repeat the frequencies across both halves; exported q/k weights then need no permute.
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) queries or keys by position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, nh|nkv, T, hs)
        if cache is not None:
            # Cached keys are stored rotated, so earlier positions are never rotated again.
            k, v = cache.update(self.layer_idx, k, v)  # (B, nkv, P+T, hs)
        if self.n_kv_head != self.n_head:
            # Grouped-query attention: each kv head serves n_head / n_kv_head query heads,
            # consecutive ones, matching HF's repeat_kv.
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(rep, dim=1)
        p = self.dropout if self.training else 0.0
        y = causal_attention(q, k, v, p, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)  # (B, T, nh*hs)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaBlock(nn.Module):
    """Attention, then one SwiGLU MLP or (a mixture-of-experts layer) routed experts."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        # Named as in LlamaForCausalLM and MixtralForCausalLM respectively.
        self.mlp: LlamaMLP | None = None
        self.block_sparse_moe: SparseMoE | None = None
        if cfg.is_moe_layer(layer_idx):
            self.block_sparse_moe = SparseMoE(cfg)
        else:
            self.mlp = LlamaMLP(cfg)
        self.dropout = _dropout(cfg.dropout)
        self.checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and, in a MoE layer, its router's logits (else None)."""
        if self.checkpointing and self.training and cache is None:  # as in GPT2Block
            out: tuple[torch.Tensor, torch.Tensor | None] = checkpoint(
                self._forward, x, cos, sin, None, mask, use_reentrant=False
            )
            return out
        return self._forward(x, cos, sin, cache, mask)

    def _forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, cache, mask))
        h = self.post_attention_layernorm(x)
        if self.block_sparse_moe is not None:
            y, router_logits = self.block_sparse_moe(h)
            return x + self.dropout(y), router_logits
        assert self.mlp is not None
        return x + self.dropout(self.mlp(h)), None


# ---------------------------------------------------------------------------- full models


class GPT2Body(nn.Module):
    """Embeddings, blocks and final norm of GPT-2 (HF's `transformer`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.drop = _dropout(cfg.dropout)
        self.h = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, C), and no router logits (GPT-2 has no experts)."""
        if position_ids is None:
            start = cache.pos if cache is not None else 0
            position_ids = torch.arange(start, start + idx.shape[1], device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(position_ids))  # (B, T, C)
        for block in self.h:
            x = block(x, cache, mask)
        return self.ln_f(x), []


class LlamaBody(nn.Module):
    """Embeddings, blocks and final norm of LLaMA (HF's `model`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        cos, sin = rope_cache(cfg.head_dim, cfg.seq_len, cfg.rope_theta)
        # Not persistent: derived from the config, so checkpoints and exports leave it out.
        self.rope_cos: torch.Tensor
        self.rope_sin: torch.Tensor
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final hidden states (B, T, C) and each MoE layer's router logits (N, E)."""
        if position_ids is None:
            start = cache.pos if cache is not None else 0
            end = start + idx.shape[1]
            cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]  # (T, hs)
        else:
            # Per-row positions: (B, 1, T, hs), broadcast over the heads.
            cos = self.rope_cos[position_ids].unsqueeze(1)
            sin = self.rope_sin[position_ids].unsqueeze(1)
        x = self.embed_tokens(idx)  # (B, T, C)
        router_logits: list[torch.Tensor] = []
        for layer in self.layers:
            x, logits = layer(x, cos, sin, cache, mask)
            if logits is not None:
                router_logits.append(logits)
        return self.norm(x), router_logits


class CausalLM(nn.Module):
    """A GPT-2 or LLaMA language model with a (possibly tied) output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "gpt2":
            self.transformer = GPT2Body(cfg)
            embedding = self.transformer.wte
        else:
            self.model = LlamaBody(cfg)
            embedding = self.model.embed_tokens
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        # The routers' losses and loads of the latest forward pass (None without experts).
        # Set by forward: training tasks (trainer.task) read them for their metrics and add
        # router_stats.penalty to the loss they compute from the logits.
        self.router_stats: RouterStats | None = None
        self.apply(self._init_weights)
        # Residual projections add into the stream once per block per branch; scaling
        # their init by 1/sqrt(2L) keeps the residual variance flat with depth (GPT-2).
        resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if cfg.scale_residual_init and name.endswith(
                ("c_proj.weight", "o_proj.weight", "down_proj.weight", "moe.w2")
            ):
                nn.init.normal_(p, mean=0.0, std=resid_std)
        if cfg.tie_embeddings:
            self.lm_head.weight = embedding.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, SparseMoE):
            for w in (module.w1, module.w3, module.w2):
                nn.init.normal_(w, mean=0.0, std=0.02)

    def body(self) -> GPT2Body | LlamaBody:
        """The embeddings-to-final-norm part of the network."""
        return self.transformer if self.cfg.arch == "gpt2" else self.model

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order (the units FSDP shards and checkpointing wraps)."""
        body = self.body()
        return body.h if isinstance(body, GPT2Body) else body.layers

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in backward instead of keeping them."""
        for block in self.blocks():
            assert isinstance(block, GPT2Block | LlamaBlock)
            block.checkpointing = enabled

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V) for token ids (B, T), and the mean cross-entropy if targets.

        With a cache, idx continues the sequence the cache holds and is appended to it.
        Packed rows pass position_ids (B, T), restarting at 0 for each example, and doc_ids
        (B, T), so attention stays inside each example. Targets equal to IGNORE_INDEX
        carry no loss. In training mode a mixture of experts adds its routers' penalty
        (load balancing and z-loss, see trainer.moe) to the loss; evaluation reports the
        cross-entropy alone.
        """
        start = cache.pos if cache is not None else 0
        if start + idx.shape[1] > self.cfg.seq_len:
            raise ValueError(
                f"sequence of {start + idx.shape[1]} exceeds seq_len {self.cfg.seq_len}"
            )
        if doc_ids is not None and cache is not None:
            raise ValueError("packed rows (doc_ids) cannot continue a KV cache")
        mask = document_mask(doc_ids) if doc_ids is not None else None
        x, router_logits = self.body()(idx, cache, position_ids, mask)  # (B, T, C)
        if cache is not None:
            cache.pos += idx.shape[1]
        logits = self.lm_head(x)  # (B, T, V)
        loss = token_cross_entropy(logits, targets) if targets is not None else None
        self.router_stats = None
        if router_logits:
            assert self.cfg.moe is not None
            self.router_stats = router_stats(router_logits, self.cfg.moe)
            if loss is not None and self.training:
                loss = loss + self.router_stats.penalty
        return logits, loss


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T), skipping IGNORE_INDEX;
    reduced by "mean" over the targets, "sum", or "none" for one value per position."""
    # fp32: bf16 logits lose too much precision in the log-softmax.
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


@functools.cache
def compiled_cross_entropy() -> Callable[..., torch.Tensor]:
    """token_cross_entropy through torch.compile, compiled at its first call.

    Eager, the fp32 upcast, the log-softmax and their gradients each make a pass over a
    (B*T, V) tensor and keep an fp32 copy of the logits for the backward pass: at a large
    vocabulary that memory traffic is a large share of a step. Compiled, the upcast fuses
    into the reductions, one pass each way, and only the logits themselves are kept.
    """
    return torch.compile(token_cross_entropy)


def cross_entropy(compiled: bool) -> Callable[..., torch.Tensor]:
    """The cross-entropy a training task uses: compiled when its model is."""
    return compiled_cross_entropy() if compiled else token_cross_entropy


def build_model(cfg: ModelConfig) -> CausalLM:
    """Construct a freshly initialised model (seed torch first for a reproducible init)."""
    return CausalLM(cfg)


def configure_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    device_type: str,
    betas: tuple[float, float],
) -> torch.optim.AdamW:
    """AdamW with weight decay on every 2D+ tensor (matrices and embeddings) only.

    Biases and norm gains are 1D: decaying them pulls the network towards zero output
    without regularising anything useful. Embeddings are decayed like the other matrices,
    as in nanoGPT; with tied weights the embedding is the output projection anyway.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel (CUDA and CPU) updates every parameter in one pass per tensor
    # instead of a dozen elementwise ops each: a large share of a small model's step.
    return torch.optim.AdamW(
        groups, lr=lr, betas=betas, eps=1e-8, fused=device_type in ("cuda", "cpu")
    )
