"""Stand-ins of the VLM tier: Qwen3-VL and InternVL directories that transformers (``hf_vlm``) and vLLM
(``vllm``) load like the hub checkpoints.

* ``qwen3_vl``: ``tiny`` is :func:`natix_miner.standins.tiny_vlm.build_tiny_vlm` (the real Qwen3-VL code,
  128 wide, 2 layers); ``full`` is the record's config (e.g. Qwen3-VL-32B: 64 x 5120, ViT 27 x 1152) with
  random weights, the same locally trained tokenizer and processor, the config's token ids wired to it.
* ``internvl``: transformers' native InternVL (``InternVLForConditionalGeneration``: InternViT, pixel-shuffle
  projector, Qwen3 text model), with a tokenizer carrying InternVL's image tokens and an InternVL-style
  chat template. (The hub's ``OpenGVLab/InternVL3_5-8B`` is the remote-code layout of the same network.)

Usage::

    from natix_miner.standins.vlm import build
    model, overrides = build(spec, record, "tiny", Path("out/qwen3_vl_32b"), "cpu", torch.float32)
"""

import json
import typing
from pathlib import Path

INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}

INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}<IMG_CONTEXT>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if not (loop.last and continue_final_message) %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _ids(tok, names: typing.Iterable[str]) -> typing.Dict[str, int]:
    return {n: int(tok.convert_tokens_to_ids(n)) for n in names}


def _qwen3_vl(spec, rec, scale, out, device, dtype):
    import transformers as tf

    from natix_miner.standins import tiny_vlm as tiny
    from natix_miner.standins.build import _instantiate

    tok = tiny.train_tokenizer()
    if scale == "tiny":
        config = tiny.tiny_config("qwen3_vl", tok, hidden=int(rec["hidden"]), layers=int(rec["layers"]))
    else:
        cfg = json.loads(json.dumps(rec["config"]))
        ids = _ids(tok, tiny.SPECIAL_TOKENS)
        cfg["text_config"].update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                                  pad_token_id=ids["<|endoftext|>"])
        config = tf.Qwen3VLConfig(text_config=cfg["text_config"], vision_config=cfg["vision_config"],
                                  image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                                  tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    model = _instantiate(tf.Qwen3VLForConditionalGeneration, config, device, dtype)
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to("cpu").save_pretrained(out)
    tiny.tiny_processor("qwen3_vl", tok).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(tiny.CHAT_TEMPLATE)
    return model, {"model": out.name}


def internvl_tokenizer():
    """The tiny Qwen BPE tokenizer plus InternVL's image tokens, exposed as the attributes the
    InternVL processor reads (``start_image_token``, ``context_image_token``, ...)."""
    from transformers import PreTrainedTokenizerFast

    from natix_miner.standins import tiny_vlm as tiny

    base = tiny.train_tokenizer()
    backend = base.backend_tokenizer
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in INTERNVL_TOKENS.values()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token=None, unk_token=None, chat_template=INTERNVL_TEMPLATE,
                                  extra_special_tokens=dict(INTERNVL_TOKENS))
    tok.padding_side = "left"
    return tok


def _internvl(spec, rec, scale, out, device, dtype):
    import transformers as tf

    from natix_miner.standins.build import _instantiate

    tok = internvl_tokenizer()
    cfg = json.loads(json.dumps(rec["config"]))
    vision, text = cfg["vision_config"], cfg["text_config"]
    vision.pop("model_type", None)
    text.pop("model_type", None)
    image = int(vision["image_size"][0])
    if scale == "tiny":
        h, layers = int(rec["hidden"]), int(rec["layers"])
        vision.update(hidden_size=h // 2, intermediate_size=h, num_hidden_layers=layers, num_attention_heads=2,
                      image_size=[112, 112])
        text.update(vocab_size=(len(tok) + 63) // 64 * 64, hidden_size=h, intermediate_size=2 * h,
                    num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=h // 2)
        image = 112
    patch = int(vision["patch_size"][0])
    seq = int((image // patch) ** 2 * float(cfg["downsample_ratio"]) ** 2)
    ids = _ids(tok, ["<|endoftext|>", "<|im_end|>", INTERNVL_TOKENS["context_image_token"]])
    text.update(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    config = tf.InternVLConfig(vision_config=tf.InternVLVisionConfig(**vision), text_config=tf.Qwen3Config(**text),
                               image_token_id=ids[INTERNVL_TOKENS["context_image_token"]], image_seq_length=seq,
                               downsample_ratio=float(cfg["downsample_ratio"]),
                               projector_hidden_act=cfg.get("projector_hidden_act", "gelu"),
                               tie_word_embeddings=False)
    model = _instantiate(tf.InternVLForConditionalGeneration, config, device, dtype)
    if out is None:
        return model, {}
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to("cpu").save_pretrained(out)
    ip = tf.GotOcr2ImageProcessor(size={"height": image, "width": image}, crop_to_patches=False,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    vp = tf.InternVLVideoProcessor(size={"height": image, "width": image})
    proc = tf.InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, image_seq_length=seq,
                                chat_template=INTERNVL_TEMPLATE)
    proc.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(INTERNVL_TEMPLATE)
    return model, {"model": out.name}


ARCHES = {"qwen3_vl": _qwen3_vl, "internvl": _internvl}


def build(spec, rec, scale: str, out: typing.Optional[Path], device: str, dtype):
    """Dispatch on the record's ``vlm_arch``; same contract as the family builders in ``build.py``."""
    return ARCHES[rec["vlm_arch"]](spec, rec, scale, out, device, dtype)
