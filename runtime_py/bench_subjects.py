"""What ``bench`` measures: an artifact (any Backend) or a baseline, behind one small interface.

Every subject can be put "at position p" (a synthesised state, see
:mod:`runtime_py.bench_state`), then decode a few tokens or run one prefill
chunk from that state; each call starts again from the state at p.

Baselines (random weights, the same shape, fp32):
  eager         our explicit-state PyTorch Griffin (TorchBackend).
  transformers  Hugging Face ``RecurrentGemmaForCausalLM``: what users run today. It keeps
                the Conv1D and RG-LRU state on module attributes and the KV window in a
                ``DynamicCache`` (window - 1 tokens), so "the state at p" is written into
                those attributes and the cache.
  gemma         Hugging Face ``GemmaForCausalLM`` with the same width, depth, heads and MLP:
                a full-context transformer whose KV cache (and decode cost) grows with p.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from exporter.config import GriffinConfig
from exporter.step.iospec import IOSpec
from runtime_py.backend import Backend, State
from runtime_py.bench_state import backend_state, synth_state_arrays

BASELINES = ("eager", "transformers", "gemma")


class Subject(Protocol):
    backend: str  # runtime name: "onnxruntime", "torch", "transformers", "coreml-emulated" (no speed goals), ...
    precision: str
    config: GriffinConfig

    def weights_bytes(self) -> tuple[int, str]:
        """(bytes of weights one decode step reads, how they were counted)."""
        ...

    def state_bytes(self, position: int) -> int:
        """Bytes of the state/cache at ``position``."""
        ...

    def set_position(self, position: int, seed: int) -> None: ...

    def decode(self, tokens: np.ndarray) -> list[float]:
        """Decode ``tokens`` one at a time from the state at the set position; seconds per step."""
        ...

    def prefill(self, tokens: np.ndarray) -> float | None:
        """Seconds for one step of all ``tokens`` from the state at the set position (None: unsupported)."""
        ...


def _param_bytes(module: torch.nn.Module) -> int:
    """Bytes of unique parameter storage (a tied head counts once)."""
    seen: dict[int, int] = {}
    for p in module.parameters():
        seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


class BackendSubject:
    """An exported artifact (or our eager model) through the common Backend protocol."""

    def __init__(self, backend: Backend, precision: str, weights: tuple[int, str], state_dtype_bytes: int) -> None:
        self.runner = backend
        self.backend = backend.name
        self.precision = precision
        self.config = backend.config
        self._weights = weights
        self._state_dtype_bytes = state_dtype_bytes
        self._base: State = None
        self._position = 0

    def weights_bytes(self) -> tuple[int, str]:
        return self._weights

    def state_bytes(self, position: int) -> int:
        return self.config.state_bytes(1, self._state_dtype_bytes)["total"]

    def set_position(self, position: int, seed: int) -> None:
        self._base = backend_state(self.runner, synth_state_arrays(self.config, position, seed))
        self._position = position

    def _inputs(self, tokens: np.ndarray, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, positions), each [1, n], of ``tokens`` placed ``offset`` tokens after the set position."""
        start = self._position + offset
        ids = np.asarray(tokens, dtype=np.int64)[None, :]
        return ids, np.arange(start, start + len(tokens), dtype=np.int64)[None, :]

    def decode(self, tokens: np.ndarray) -> list[float]:
        state, times = self._base, []
        for i in range(len(tokens)):
            ids, pos = self._inputs(tokens[i : i + 1], i)
            t0 = time.perf_counter()
            _, state = self.runner.step(ids, pos, state)
            times.append(time.perf_counter() - t0)
        return times

    def run_steps(self, tokens: np.ndarray, lengths: list[int]) -> float:
        """Seconds to run ``tokens`` as consecutive steps of ``lengths`` tokens from the state at the
        set position, each step's state handed to the next (as the generation loop does)."""
        if sum(lengths) != len(tokens):
            raise ValueError(f"steps of {sum(lengths)} tokens for {len(tokens)} tokens")
        state, start = self._base, 0
        t0 = time.perf_counter()
        for n in lengths:
            _, state = self.runner.step(*self._inputs(tokens[start : start + n], start), state)
            start += n
        return time.perf_counter() - t0

    def prefill(self, tokens: np.ndarray) -> float | None:
        lens = self.runner.seq_lens()
        if lens is not None and len(tokens) not in lens:
            return None
        ids, pos = self._inputs(tokens)
        t0 = time.perf_counter()
        self.runner.step(ids, pos, self._base)
        return time.perf_counter() - t0


def eager_subject(config: GriffinConfig, seed: int, threads: int) -> BackendSubject:
    from exporter.checkpoint.random_init import random_model
    from runtime_py.torch_backend import TorchBackend

    model = random_model(config, seed=seed)
    return BackendSubject(TorchBackend(model, threads=threads), "fp32", (_param_bytes(model), "parameters"), 4)


class _HFSubject:
    """Shared timing loop of the transformers baselines (state lives in the model and ``self.cache``)."""

    backend = "transformers"
    precision = "fp32"
    config: GriffinConfig
    model: Any
    cache: Any

    def __init__(self) -> None:
        self._position = 0

    def weights_bytes(self) -> tuple[int, str]:
        return _param_bytes(self.model), "parameters (tied head once)"

    def _restore(self) -> None:
        raise NotImplementedError

    @torch.inference_mode()
    def _run(self, tokens: np.ndarray, start: int) -> None:
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None, :]
        pos = torch.arange(start, start + len(tokens), dtype=torch.int64)[None, :]
        self.model(input_ids=ids, position_ids=pos, cache=self.cache, use_cache=True)

    def decode(self, tokens: np.ndarray) -> list[float]:
        self._restore()
        times = []
        for i, tok in enumerate(tokens):
            t0 = time.perf_counter()
            self._run(np.array([tok]), self._position + i)
            times.append(time.perf_counter() - t0)
        return times

    def prefill(self, tokens: np.ndarray) -> float | None:
        self._restore()
        t0 = time.perf_counter()
        self._run(tokens, self._position)
        return time.perf_counter() - t0


class TransformersRecurrentGemma(_HFSubject):
    """``RecurrentGemmaForCausalLM`` (random weights) with the synthesised state written into it."""

    def __init__(self, config: GriffinConfig, threads: int) -> None:
        super().__init__()
        from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

        from exporter.checkpoint.hf_config import config_to_hf

        torch.set_num_threads(threads)
        skip = {"architectures", "model_type", "torch_dtype", "name"}
        self.hf_config = RecurrentGemmaConfig(**{k: v for k, v in config_to_hf(config).items() if k not in skip})
        self.model = RecurrentGemmaForCausalLM(self.hf_config).eval()
        self.config = config
        self._base: dict[str, np.ndarray] = {}

    def state_bytes(self, position: int) -> int:
        # conv + RG-LRU state (fp32) + a KV window of w - 1 tokens: as our state, one slot less.
        return self.config.state_bytes(1, 4)["total"]

    def set_position(self, position: int, seed: int) -> None:
        self._base = synth_state_arrays(self.config, position, seed)
        self._position = position

    def _restore(self) -> None:
        from transformers import DynamicCache

        c, p, w = self.config, self._position, self.config.window
        self.cache = DynamicCache(config=self.hf_config)
        # HF keeps the last w - 1 tokens in time order; ours is a ring (slot = position % w).
        slots = [q % w for q in range(max(0, p - (w - 1)), p)]
        for i, layer in enumerate(self.model.model.layers):
            block = layer.temporal_block
            if c.block_types[i] == "recurrent":
                conv = self._base[IOSpec.state_input_name(i, "conv_state")]  # [b, c, l] -> HF [b, l, c]
                block.conv1d_state = torch.from_numpy(conv.transpose(0, 2, 1).copy())
                block.rg_lru.recurrent_states = torch.from_numpy(
                    self._base[IOSpec.state_input_name(i, "recurrent_state")]
                )
            elif slots:
                k = torch.from_numpy(self._base[IOSpec.state_input_name(i, "key")][:, :, slots, :].copy())
                v = torch.from_numpy(self._base[IOSpec.state_input_name(i, "value")][:, :, slots, :].copy())
                self.cache.update(k, v, i)
                self.cache.layers[i].cumulative_length = p


class TransformersGemma(_HFSubject):
    """``GemmaForCausalLM`` (random weights, our width/depth/heads/MLP) with a random KV cache of p tokens."""

    def __init__(self, config: GriffinConfig, threads: int, max_position: int) -> None:
        super().__init__()
        from transformers import GemmaConfig, GemmaForCausalLM

        torch.set_num_threads(threads)
        self.hf_config = GemmaConfig(
            vocab_size=config.vocab_size, hidden_size=config.width, intermediate_size=config.mlp_width,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
            max_position_embeddings=max(8192, max_position), tie_word_embeddings=True,
            bos_token_id=config.bos_id, eos_token_id=config.eos_id, pad_token_id=config.pad_id,
        )  # fmt: skip
        self.model = GemmaForCausalLM(self.hf_config).eval()
        self.config = config
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []

    def state_bytes(self, position: int) -> int:
        c = self.config
        return c.num_layers * 2 * c.num_kv_heads * c.head_dim * position * 4

    def set_position(self, position: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        c = self.config
        shape = (1, c.num_kv_heads, position, c.head_dim)
        self._kv = []  # release the previous position's cache first
        self._kv = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) for _ in range(c.num_layers)]
        self._position = position

    def _restore(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.hf_config)
        for i, (k, v) in enumerate(self._kv):
            self.cache.update(k[:, :, :0], v[:, :, :0], i)  # lazy init; then point at the base tensors
            layer = self.cache.layers[i]
            layer.keys, layer.values = k, v  # update() concatenates into new tensors: the base is never mutated
