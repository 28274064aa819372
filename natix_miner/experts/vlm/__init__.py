"""Vision-language experts: P(roadwork) from a VLM's yes/no answer logprobs (docs/vlm.md).

Families (registered in ``natix_miner.experts.FAMILIES``; modules import their heavy libraries lazily):

* ``vllm`` -> :mod:`.vllm_engine` - an in-process ``vllm.v1.engine.async_llm.AsyncLLM`` engine;
* ``hf_vlm`` -> :mod:`.hf_backend` - the same models through transformers (CPU hosts);
* ``openai_vlm`` -> :mod:`.openai_backend` - an OpenAI-compatible server elsewhere (``vllm serve``).

Shared: :mod:`.prompt` (options, answer tokens, probability, thinking parse), :mod:`.common` (the
expert base). Tool: :mod:`.hf_server` (an OpenAI-compatible server on transformers). Tiny Qwen-VL
checkpoints built offline: :mod:`natix_miner.standins.tiny_vlm`; LoRA fine-tuning:
:mod:`natix_miner.training.vlm_lora`.

Usage::

    from natix_miner.experts import create_expert
    expert = create_expert(spec)            # spec.family in {"vllm", "hf_vlm", "openai_vlm"}
"""
