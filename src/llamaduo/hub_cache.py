"""Hub models and datasets already in the local Hugging Face cache, found without the network.

"Download once, then run offline" (HF_HUB_OFFLINE=1) is a core use case, but `datasets` 5.x
offline only finds data in its own prepared cache, not in the huggingface_hub cache
(`datasets--org--name/snapshots/<sha>/...`, where it downloads the files), and our own
reachability check refused every Hub id offline. These look-ups read the huggingface_hub cache
layout through huggingface_hub itself (`local_files_only=True`: no request, no wait), so an id
that is cached loads offline and one that is not fails at once with a clear message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def cached_dataset_dir(repo_id: str, revision: Optional[str] = None) -> Optional[Path]:
    """The cached snapshot folder of a Hub dataset (its files as in the repo), or None."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, a bad id...: simply not cached
        return None
    return path if any(path.iterdir()) else None


def is_model_cached(repo_id: str, revision: Optional[str] = None) -> bool:
    """A Hub model whose config.json (or adapter_config.json) is in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str):
                return True
        except Exception:  # noqa: BLE001 - an invalid repo id is "not cached"
            return False
    return False
