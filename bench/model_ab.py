"""One training step of two versions of grok_tune/model.py, side by side in one process.

    .venv/bin/python bench/model_ab.py OLD_MODEL_PY [--threads 1] [--rounds 12] [--steps 30]

OLD_MODEL_PY is another checkout's model.py (``git worktree add /tmp/old <commit>``). Both
build the paper's model (2 layers, width 128, x∘y mod 97's layout, batch 512, shared prefix)
with the same weights, check that their logits are equal bit for bit, then time rounds of
AdamW steps, alternating which goes first: on a shared machine only this ratio means anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Any

import torch

import grok_tune.model as new


def load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("old_model", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_model"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_model_py")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    old = load(args.old_model_py)
    torch.manual_seed(0)
    layout = dict(vocab_size=99, num_classes=97, n_positions=4, shared_prefix=2)
    models = {"old": old.Transformer(old.ModelConfig(**layout))}
    models["new"] = new.Transformer(new.ModelConfig(**layout))
    models["new"].load_state_dict(models["old"].state_dict())
    x = torch.randint(0, 97, (512, 4))
    x[:, 1], x[:, 3] = 97, 98  # 'a ∘ b ='
    y = torch.randint(0, 97, (512,))
    assert torch.equal(models["old"](x), models["new"](x)), "the two models differ"
    opts = {k: torch.optim.AdamW(m.parameters(), fused=True) for k, m in models.items()}

    def step(k: str) -> None:
        loss = torch.nn.functional.cross_entropy(models[k](x)[:, -1], y)
        opts[k].zero_grad(set_to_none=True)
        loss.backward()
        opts[k].step()

    for _ in range(10):
        step("old"), step("new")
    ms: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for k in ("old", "new") if r % 2 else ("new", "old"):
            t = time.perf_counter()
            for _ in range(args.steps):
                step(k)
            ms[k].append((time.perf_counter() - t) / args.steps * 1e3)
    for k, v in ms.items():
        print(f"{k}: median {statistics.median(v):.2f} ms/step, best {min(v):.2f}")
    print(f"new/old (medians): {statistics.median(ms['new']) / statistics.median(ms['old']):.3f}")


if __name__ == "__main__":
    main()
