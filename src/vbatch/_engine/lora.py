"""LoRA adapters a launched server serves beside its model (``--lora NAME=PATH``): what each
adapter folder says (peft's ``adapter_config.json``), and the vLLM flags that serve them all.

Every adapter given is resident at once, up to ``MAX_RESIDENT_LORAS``: vLLM then batches rows
of different adapters in one step (its LoRA kernels take a mixed batch), so the order rows come
in does not matter and one job's window serves them all. Past that many, vLLM swaps adapters
in and out of its slots (``--max-cpu-loras`` holds the rest in host memory), and a row waits for
its adapter's turn.

Past ``MAX_RESIDENT_LORAS``, vLLM runs only rows of the adapters in its slots and skips the
others until a slot frees: with every adapter's rows mixed in the window, most of the window
waits. ``adapter_groups`` then cuts the adapters into groups of that many, and the run sends the
rows group by group (one job, one window: a group's rows start as the previous group's last rows
are still running, so nothing drains between them).

On the CPU, vLLM 0.32's LoRA ops read a row of the model itself (LoRA index -1) from the last
slot, so in a batch that mixes such rows with adapters' rows they get the last adapter's weights
(vllm-project/vllm#48421, open): a CPU server gets one slot more than its adapters, which no
adapter ever fills, and stays all zeros.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from .._config import Backend
from .._errors import ConfigError

__all__ = ["MAX_RESIDENT_LORAS", "Adapter", "adapter_groups", "lora_args", "read_adapters"]

# The ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Adapters in the GPU's LoRA slots at once (each slot holds one adapter of the largest rank for
# every layer it targets: a few MB to tens of MB for a 1B model).
MAX_RESIDENT_LORAS = 16


@dataclass(frozen=True)
class Adapter:
    name: str  # the model name rows ask for it by
    path: str
    rank: int


def read_adapters(given: Iterable[tuple[str, str]], base_name: str | None = None) -> list[Adapter]:
    """Each ``(name, path)``'s facts from its folder; ``ConfigError`` naming the adapter for a
    folder that is not a LoRA adapter, a name given twice, or one that is the model's own."""
    adapters: list[Adapter] = []
    seen: set[str] = set()
    for name, path in given:
        if name in seen:
            raise ConfigError(f"--lora {name}: the name is given twice")
        if base_name is not None and name == base_name:
            raise ConfigError(f"--lora {name}: the name is the model's own")
        seen.add(name)
        config_path = Path(path).expanduser() / "adapter_config.json"
        try:
            config = orjson.loads(config_path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"--lora {name}={path}: not a LoRA adapter folder (no "
                              "adapter_config.json)") from None  # fmt: skip
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"--lora {name}={path}: cannot read {config_path}: {exc}") from None
        kind = config.get("peft_type", "LORA")
        if kind != "LORA":
            raise ConfigError(f"--lora {name}={path}: a {kind} adapter; vLLM serves LoRA ones")
        ranks = [config.get("r") or 8, *(config.get("rank_pattern") or {}).values()]
        adapters.append(Adapter(name, str(Path(path).expanduser().resolve()), max(ranks)))
    return adapters


def lora_args(adapters: Sequence[Adapter], backend: Backend) -> tuple[str, ...]:
    """vLLM's flags for serving ``adapters``: LoRA on, each by its name, the slots sized for
    the largest rank and for all of them at once (up to ``MAX_RESIDENT_LORAS``; on the CPU one
    empty slot more, see the module)."""
    if not adapters:
        return ()
    rank = max(a.rank for a in adapters)
    slot_rank = next((r for r in LORA_RANKS if r >= rank), None)
    if slot_rank is None:
        raise ConfigError(f"LoRA rank {rank} is more than vLLM serves ({LORA_RANKS[-1]})")
    slots = min(len(adapters), MAX_RESIDENT_LORAS) + (backend == "cpu")
    return ("--enable-lora", "--lora-modules", *(f"{a.name}={a.path}" for a in adapters),
            "--max-lora-rank", str(slot_rank), "--max-loras", str(slots),
            "--max-cpu-loras", str(max(slots, len(adapters))))  # fmt: skip


def adapter_groups(asked: Sequence[str], adapters: Sequence[str]) -> list[list[str]] | None:
    """The adapters rows ask for (``asked``, in the order rows first ask), in groups of up to
    ``MAX_RESIDENT_LORAS`` to send one after another; None where one group holds them all (no
    need to order anything). Names that are not adapters (the model's own) go with the first
    group."""
    wanted = [name for name in asked if name in set(adapters)]
    if len(wanted) <= MAX_RESIDENT_LORAS:
        return None
    groups = [wanted[i : i + MAX_RESIDENT_LORAS] for i in range(0, len(wanted), MAX_RESIDENT_LORAS)]
    groups[0] = [*groups[0], *(name for name in asked if name not in set(adapters))]
    return groups
