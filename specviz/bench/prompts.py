"""Prompt files: the bundled code prompts and the JSONL format the bench, the app and the workshop read."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "code.jsonl"


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """jsonl: {"id", "prompt"[, "category"]} or Spec-Bench's {"question_id", "category", "turns"} (first turn)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file not found: {path}")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
        if isinstance(obj, dict) and "prompt" in obj:
            prompts.append(
                {"id": str(obj.get("id", n)), "category": str(obj.get("category", "")), "prompt": str(obj["prompt"])}
            )
        elif isinstance(obj, dict) and obj.get("turns"):
            prompts.append(
                {
                    "id": str(obj.get("question_id", n)),
                    "category": str(obj.get("category", "")),
                    "prompt": str(obj["turns"][0]),
                }
            )
        else:
            raise ValueError(f"{path}:{n}: expected {{'id', 'prompt'}} or {{'question_id', 'category', 'turns'}}")
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts[:limit] if limit else prompts
