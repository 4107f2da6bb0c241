"""Typed Griffin / RecurrentGemma configuration and presets.

Shape legend used across the project (after recurrentgemma's array_typing.py):
  b = batch, t = time (tokens in this step), w = attention window,
  d = width, l = lru_width, h = attention heads, k = key/value heads,
  e = head_dim, v = vocab, c = conv_width - 1, f = MLP hidden width.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from exporter.errors import RgMobileError

BlockType = Literal["recurrent", "attention"]
BLOCK_TYPES: tuple[BlockType, ...] = ("recurrent", "attention")


def griffin_pattern(num_layers: int) -> tuple[BlockType, ...]:
    """(recurrent, recurrent, attention) repeated, cut to ``num_layers``."""
    cycle: tuple[BlockType, ...] = ("recurrent", "recurrent", "attention")
    return tuple(cycle[i % 3] for i in range(num_layers))


# Bounds of every integer / float field. Generous (RecurrentGemma-9B is far inside them) but finite:
# a config read from JSON must not make us build a 10^12-layer model or a 10^9-slot KV ring.
MAX_LAYERS = 1024
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1 << 21),
    "width": (1, 1 << 16),
    "mlp_width": (1, 1 << 18),
    "num_heads": (1, 1024),
    "num_kv_heads": (1, 1024),
    "lru_width": (1, 1 << 16),
    "window": (1, 1 << 20),
    "conv_width": (1, 64),
    "bos_id": (0, (1 << 21) - 1),
    "eos_id": (0, (1 << 21) - 1),
    "pad_id": (0, (1 << 21) - 1),
}
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "logits_soft_cap": (0.0, 1e6),  # 0 disables it
    "rope_theta": (1e-6, 1e12),
    "partial_rotary_factor": (1e-6, 1.0),
    "rms_norm_eps": (0.0, 1.0),
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class GriffinConfig:
    """Architecture of a RecurrentGemma / Griffin model.

    Fields:
      vocab_size: tokens in the vocabulary (v); the embedding is tied to the head.
      width: model width (d).
      mlp_width: hidden width of the gated MLP (f). RecurrentGemma-2B: 7680.
        Hugging Face's ``intermediate_size`` is twice this value.
      num_heads: attention heads (h); also the number of blocks of the
        block-diagonal RG-LRU gates.
      num_kv_heads: key/value heads (k). RecurrentGemma uses 1 (multi-query).
      lru_width: RG-LRU width (l), usually equal to ``width``.
      block_types: one entry per layer, "recurrent" or "attention".
      window: local attention window (w); the KV ring buffer has w slots.
        A query attends to the w cached tokens and itself (official semantics).
      conv_width: temporal width of the Conv1D (the state keeps conv_width-1 rows).
      logits_soft_cap: ``tanh(x / cap) * cap`` on the logits; 0 disables it.
      embed_scale_by_sqrt_width: scale embeddings by sqrt(width), rounded
        through bfloat16 as in training.
      rope_theta: RoPE base wavelength.
      partial_rotary_factor: fraction of head_dim that RoPE rotates (0.5).
      rms_norm_eps: RMSNorm epsilon.
      attention_bias: whether q/k/v projections have biases (False upstream).
      bos_id, eos_id, pad_id: special token ids (Gemma: 2, 1, 0).
    """

    vocab_size: int
    width: int
    mlp_width: int
    num_heads: int
    num_kv_heads: int
    lru_width: int
    block_types: tuple[BlockType, ...]
    window: int
    conv_width: int = 4
    logits_soft_cap: float = 30.0
    embed_scale_by_sqrt_width: bool = True
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Types and ranges first (a config is read from untrusted JSON): every message names the key.
        for key, (lo, hi) in INT_BOUNDS.items():
            value = getattr(self, key)
            if not _is_int(value) or not lo <= value <= hi:
                want = "a positive integer" if lo == 1 else "a non-negative integer"
                raise RgMobileError(f"config: {key} must be {want} (at most {hi:,}), got {value!r}")
        for key, (low, high) in FLOAT_BOUNDS.items():
            number = getattr(self, key)
            if not _is_number(number) or not math.isfinite(number) or not low <= number <= high:
                raise RgMobileError(f"config: {key} must be a finite number in [{low:g}, {high:g}], got {number!r}")
            object.__setattr__(self, key, float(number))  # 30 and 30.0 are one config (same config_sha256)
        for key in ("embed_scale_by_sqrt_width", "attention_bias"):
            if not isinstance(getattr(self, key), bool):
                raise RgMobileError(f"config: {key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.name, str):
            raise RgMobileError(f"config: name must be a string, got {self.name!r}")
        if not isinstance(self.block_types, tuple) or not all(isinstance(b, str) for b in self.block_types):
            raise RgMobileError(f"config: block_types must be a list of strings, got {self.block_types!r}")
        if len(self.block_types) > MAX_LAYERS:
            raise RgMobileError(f"config: {len(self.block_types):,} layers; at most {MAX_LAYERS} are supported")
        for key in ("bos_id", "eos_id", "pad_id"):
            if getattr(self, key) >= self.vocab_size:
                raise RgMobileError(
                    f"config: {key} {getattr(self, key)} is not a token id of vocab_size {self.vocab_size}"
                )
        if not self.block_types:
            raise RgMobileError("config: block_types is empty; a model needs at least one layer")
        bad = [b for b in self.block_types if b not in BLOCK_TYPES]
        if bad:
            raise RgMobileError(f"config: unknown block type(s) {bad}; valid: {list(BLOCK_TYPES)}")
        if self.width % self.num_heads:
            raise RgMobileError(f"config: width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.lru_width % self.num_heads:
            raise RgMobileError(f"config: lru_width {self.lru_width} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise RgMobileError(
                f"config: num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        rot = self.rotary_dim
        if rot % 2 or rot <= 0 or rot > self.head_dim:
            raise RgMobileError(
                f"config: partial_rotary_factor {self.partial_rotary_factor} gives rotary dim {rot}; "
                f"it must be even and within head_dim {self.head_dim}"
            )

    # --- derived sizes -----------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.block_types)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def embed_scale(self) -> float:
        """sqrt(width) rounded through bfloat16, exactly as upstream computes it."""
        if not self.embed_scale_by_sqrt_width:
            return 1.0
        import torch

        return float(torch.tensor(math.sqrt(self.width), device="cpu").to(torch.bfloat16).float())

    def layers_of(self, kind: BlockType) -> list[int]:
        return [i for i, b in enumerate(self.block_types) if b == kind]

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts by part (the head is tied to the embedding)."""
        d, f, l, e = self.width, self.mlp_width, self.lru_width, self.head_dim
        bw = l // self.num_heads
        mlp = 2 * (d * f + f) + f * d + d
        rec = 2 * (d * l + l) + l * d + d + self.conv_width * l + l + l + 2 * (self.num_heads * bw * bw + l)
        qkv_out = self.num_heads * e + 2 * self.num_kv_heads * e
        att = d * qkv_out + self.num_heads * e * d + d
        if self.attention_bias:
            att += qkv_out
        norms = 2 * d
        n_rec = len(self.layers_of("recurrent"))
        n_att = len(self.layers_of("attention"))
        blocks = n_rec * (rec + mlp + norms) + n_att * (att + mlp + norms)
        embedding = self.vocab_size * d
        return {"embedding": embedding, "blocks": blocks, "final_norm": d, "total": embedding + blocks + d}

    def state_bytes(self, batch: int = 1, dtype_bytes: int = 4) -> dict[str, int]:
        """Bytes of the whole recurrent state; independent of context length.

        ``dtype_bytes`` is the element size of the KV ring buffers and Conv1D state
        (4 for fp32, 2 for fp16/bf16); the RG-LRU state is always fp32.
        """
        n_rec = len(self.layers_of("recurrent"))
        n_att = len(self.layers_of("attention"))
        conv = n_rec * (self.conv_width - 1) * self.lru_width * dtype_bytes
        rglru = n_rec * self.lru_width * 4
        kv = n_att * 2 * self.num_kv_heads * self.window * self.head_dim * dtype_bytes
        return {"conv": batch * conv, "rg_lru": batch * rglru, "kv": batch * kv, "total": batch * (conv + rglru + kv)}

    def memory_bytes(self, dtype_bytes: int = 4) -> int:
        """What holding this model needs at least: its parameters plus one batch-1 state, in bytes."""
        return self.parameter_counts()["total"] * dtype_bytes + self.state_bytes(dtype_bytes=dtype_bytes)["total"]

    def check_memory(self, dtype_bytes: int = 4, what: str = "this model") -> None:
        """Refuse, before anything is allocated, a config whose weights + state exceed the memory available."""
        need = self.memory_bytes(dtype_bytes)
        have = available_memory_bytes()
        if have is not None and need > have:
            raise RgMobileError(
                f"config: {what} needs {need / 2**30:.1f} GiB for its weights and state "
                f"({self.parameter_counts()['total']:,} parameters x {dtype_bytes} B + state) but only "
                f"{have / 2**30:.1f} GiB of memory is available; check the config's sizes"
            )

    # --- (de)serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["block_types"] = list(self.block_types)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GriffinConfig:
        """Parse ``to_dict()`` output (e.g. a manifest's config); wrong types or ranges name the key."""
        if not isinstance(data, dict):
            raise RgMobileError(f"config: expected an object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise RgMobileError(f"config: unknown field(s) {unknown}")
        data = dict(data)
        blocks = data.get("block_types", ())
        if not isinstance(blocks, list | tuple):
            raise RgMobileError(f"config: block_types must be a list of strings, got {blocks!r}")
        data["block_types"] = tuple(blocks)
        try:
            return cls(**data)
        except TypeError as exc:
            raise RgMobileError(f"config: {exc}") from None

    def with_(self, **changes: Any) -> GriffinConfig:
        return replace(self, **changes)


def available_memory_bytes() -> int | None:
    """Memory the system can still give us (MemAvailable + free swap, Linux); None when unknown."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo", encoding="ascii").read().splitlines())
        kib = int(fields["MemAvailable"].split()[0]) + int(fields.get("SwapFree", "0 kB").split()[0])
    except (OSError, KeyError, ValueError):
        return None
    return kib * 1024


def _preset_2b() -> GriffinConfig:
    return GriffinConfig(
        vocab_size=256_000, width=2560, mlp_width=3 * 2560, num_heads=10, num_kv_heads=1,
        lru_width=2560, block_types=griffin_pattern(26), window=2048, name="recurrentgemma-2b",
    )  # fmt: skip


def _preset_9b() -> GriffinConfig:
    return GriffinConfig(
        vocab_size=256_000, width=4096, mlp_width=3 * 4096, num_heads=16, num_kv_heads=1,
        lru_width=4096, block_types=griffin_pattern(38), window=2048, name="recurrentgemma-9b",
    )  # fmt: skip


def _preset_tiny() -> GriffinConfig:
    """Test-sized: runs in milliseconds, crosses the window after 16 tokens."""
    return GriffinConfig(
        vocab_size=128, width=64, mlp_width=192, num_heads=4, num_kv_heads=1,
        lru_width=64, block_types=griffin_pattern(6), window=16, name="tiny",
    )  # fmt: skip


def _preset_small() -> GriffinConfig:
    """The shape of the bundled, self-trained English model."""
    return GriffinConfig(
        vocab_size=4096, width=256, mlp_width=768, num_heads=4, num_kv_heads=1,
        lru_width=256, block_types=griffin_pattern(6), window=64, name="small",
    )  # fmt: skip


PRESETS = {"tiny": _preset_tiny, "small": _preset_small, "2b": _preset_2b, "9b": _preset_9b}


def preset(name: str) -> GriffinConfig:
    """A named preset; an unknown name fails with the valid choices."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise RgMobileError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}") from None
