"""Build a tiny Qwen-VL checkpoint offline: random weights, a locally trained tokenizer, a chat template.

Real architectures (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) shrunk to about a million parameters, saved with
``save_pretrained`` so that transformers (``AutoModelForImageTextToText``) and vLLM (``LLM`` /
``AsyncLLM``) load the directory exactly as they would a hub checkpoint. Used by
``natix-miner models stand-in`` (the Qwen3-VL stand-in at ``tiny`` scale, :mod:`natix_miner.standins.vlm`),
by ``natix-miner train-vlm``'s tests and by anyone who wants to try the VLM tier on a laptop. Random weights answer near P(yes) = 0.5.

Usage::

    from natix_miner.standins.tiny_vlm import build_tiny_vlm
    path = build_tiny_vlm("/tmp/tiny-qwen2vl", arch="qwen2_vl")   # or qwen2_5_vl / qwen3_vl

    python -m natix_miner.standins.tiny_vlm /tmp/tiny-qwen2vl --arch qwen2_5_vl

Facts that matter (see docs/vlm.md): M-RoPE sections go in ``rope_parameters`` and sum to
head_dim / 2 (else vLLM silently uses plain RoPE); the vision tower's output size equals the text
hidden size; the image / vision-marker ids in the config equal the tokenizer's; "yes" / "no" (and
their capitalised and space-prefixed forms) are single tokens.
"""

import argparse
import json
import typing
from pathlib import Path

ARCHES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Must be single tokens of the trained vocabulary (the expert's start-up check relies on it).
ANSWER_TOKENS = ["yes", "no", "Yes", "No", " yes", " no", " Yes", " No"]

# A Qwen-style chat template: system turn, user turn with image placeholders, generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if not (loop.last and continue_final_message) %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.",
    "Is there road work or construction in this dashcam image? Answer yes or no.",
    "Does this image show roadwork, construction zones, traffic cones, barriers, excavators or workers?",
    "Think step by step about the scene, then finish with Answer: yes or Answer: no.",
    "The road ahead has orange cones and a lane closure sign. Answer: yes",
    "The street is clear with parked cars and trees. Answer: no",
    "yes no Yes No yes no Yes No",
    "Answer: yes. Answer: no. Answer: Yes. Answer: No.",
]


def train_tokenizer(vocab_size: int = 640):
    """A byte-level BPE tokenizer trained in memory, wrapped for transformers, with the Qwen specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token=None, unk_token=None, chat_template=CHAT_TEMPLATE)
    fast.padding_side = "left"
    for word in ANSWER_TOKENS:
        ids = fast.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"tiny tokenizer: answer word {word!r} is {len(ids)} tokens; widen the corpus")
    return fast


def _ids(tok) -> typing.Dict[str, int]:
    return {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def tiny_config(arch: str, tok, hidden: int = 128, layers: int = 2, heads: int = 2):
    """The architecture's config class, shrunk; ids wired to the tokenizer's."""
    import transformers as tf

    ids = _ids(tok)
    vocab = (len(tok) + 63) // 64 * 64
    head_dim = hidden // heads
    if head_dim < 64:
        raise ValueError("keep head_dim >= 64 (vLLM attention backends)")
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # e.g. [8, 12, 12] for 64
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
    text = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], rope_parameters=rope)
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  tie_word_embeddings=False)
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=hidden, hidden_size=hidden, num_heads=heads, mlp_ratio=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return tf.Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if arch == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=heads,
                      out_hidden_size=hidden, fullatt_block_indexes=[1], window_size=112, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        return tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if arch == "qwen3_vl":
        text.update(head_dim=head_dim)
        text["rope_parameters"] = dict(rope, mrope_interleaved=True)
        vision = dict(depth=2, hidden_size=hidden, intermediate_size=2 * hidden, num_heads=heads,
                      out_hidden_size=hidden, num_position_embeddings=256, deepstack_visual_indexes=[0],
                      patch_size=16, spatial_merge_size=2, temporal_patch_size=2)
        return tf.Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown arch {arch!r}; choose from {ARCHES}")


def tiny_processor(arch: str, tok, max_pixels: int = 448 * 448, min_pixels: int = 56 * 56):
    import transformers as tf

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if arch == "qwen3_vl":
        image = tf.Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, size=size,
                                         image_mean=[0.5] * 3, image_std=[0.5] * 3)
        video = tf.Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
        return tf.Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video,
                                   chat_template=CHAT_TEMPLATE)
    image = tf.Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, size=size)
    video = tf.Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    cls = tf.Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else tf.Qwen2VLProcessor
    return cls(image_processor=image, tokenizer=tok, video_processor=video, chat_template=CHAT_TEMPLATE)


def build_tiny_vlm(out_dir: typing.Union[str, Path], arch: str = "qwen2_vl", seed: int = 0,
                   hidden: int = 128, layers: int = 2) -> str:
    """Write a complete tiny checkpoint (config, weights, tokenizer, processor, template); return the path."""
    import torch
    import transformers as tf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    config = tiny_config(arch, tok, hidden=hidden, layers=layers)
    cls = {"qwen2_vl": tf.Qwen2VLForConditionalGeneration, "qwen2_5_vl": tf.Qwen2_5_VLForConditionalGeneration,
           "qwen3_vl": tf.Qwen3VLForConditionalGeneration}[arch]
    torch.manual_seed(seed)
    model = cls(config).eval()
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    processor = tiny_processor(arch, tok)
    processor.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out / "natix_tiny.json").write_text(json.dumps({"arch": arch, "seed": seed, "hidden": hidden,
                                                     "layers": layers}))
    return str(out)


def main(argv: typing.Optional[typing.Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--arch", choices=ARCHES, default="qwen2_vl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(build_tiny_vlm(args.out_dir, args.arch, args.seed))


if __name__ == "__main__":
    main()
