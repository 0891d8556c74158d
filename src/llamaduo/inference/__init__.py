"""Local-model inference for batch_inference.py (and the benchmark).

Modules, one concern each:
* `model_ref`    – what `ft_model_id` is (full/merged vs adapter, local vs Hub) and its base; no weights loaded
* `prompts`      – test rows -> chat prompts, reference answers, token ids
* `plan`         – work items (prompt x repeat, each with its seed), length-sorted batches, rank shards
* `sampling`     – per-sample seeded sampling independent of batch composition
* `hf_backend`   – tokenizer/model loading (adapter merge) and batched `generate` (length-grouped
                   prefill, rounds from which finished rows leave)
* `kv_cache`     – a KV cache that appends into spare room instead of copying
* `decode_attention` – CPU decode attention in runs of rows that skip most left padding, and for
  lookup decoding's packed forwards
* `lookup_decoding` – greedy CPU decoding that checks copied tokens (prompt lookup) several per forward,
  each forward one packed sequence, each row's draft length following how its drafts fare
* `vllm_backend` – the same through vLLM (lazy import, LoRARequest, tensor parallel)
* `store`        – append-and-fsync partial results for resume
* `distributed`  – rank/world from torchrun/accelerate, barrier

The `local` service-LLM provider (service_llm/providers/local.py) generates through `hf_backend` too.
"""
