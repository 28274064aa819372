"""Tiny real transformers models (random weights) saved like hub checkpoints, for expert tests.

Every builder writes a directory that ``from_pretrained`` loads offline: real architecture code,
configs shrunk so a forward pass takes milliseconds, tokenizers trained in memory.

Usage::

    from tests.support.tiny_hf import reference_vit, tiny_dinov2, tiny_clip, write_profile
    d = reference_vit(tmp_path / "vit")       # the natix ViT layout (None/Roadwork), tiny
"""

import json
import typing
from pathlib import Path

import numpy as np

PROMPT_WORDS = (
    "a dashcam photo of road work construction site with traffic cones and barriers street lane closed for "
    "roadworks workers in safety vests working on the sign excavator digging clear empty highway normal "
    "city parked cars country no residential sunny day an"
)


def reference_vit(directory: Path, id2label=None, seed: int = 0) -> Path:
    """The reference ``natix-network-org/roadwork`` checkpoint's layout, shrunk.

    config.json carries the same keys as the published one (ViTForImageClassification,
    ``id2label`` {0: None, 1: Roadwork}, single-label problem type, written by transformers 4.49)
    with tiny dimensions; preprocessor_config.json is the legacy ViTImageProcessor format.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTForImageClassification

    id2label = id2label or {0: "None", 1: "Roadwork"}
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "_name_or_path": "hayden-yuma/roadwork", "architectures": ["ViTForImageClassification"],
        "attention_probs_dropout_prob": 0.0, "encoder_stride": 16, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "hidden_size": 32,
        "id2label": {str(k): v for k, v in id2label.items()}, "image_size": 224,
        "initializer_range": 0.02, "intermediate_size": 64,
        "label2id": {v: k for k, v in id2label.items()}, "layer_norm_eps": 1e-12, "model_type": "vit",
        "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2, "patch_size": 16,
        "problem_type": "single_label_classification", "qkv_bias": True, "torch_dtype": "float32",
        "transformers_version": "4.49.0",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 2,
        "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}}, indent=2))
    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig.from_pretrained(directory))
    with torch.no_grad():  # a classifier bias that differs per class, so the label choice matters
        model.classifier.bias.copy_(torch.linspace(-1.0, 1.0, len(id2label)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    return directory


def tiny_dinov2(directory: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=224)).save_pretrained(directory)
    return directory


def tiny_dinov3(directory: Path) -> Path:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    DINOv3ViTModel(DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                   patch_size=16, image_size=224, num_register_tokens=4)).save_pretrained(directory)
    return directory


def word_tokenizer(with_bos: bool = True):
    """A word-level tokenizer trained in memory; ids: [PAD]=0 [UNK]=1 [BOS]=2 [EOS]=3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator([PROMPT_WORDS], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[BOS]", "[EOS]"]))
    single = "[BOS] $A [EOS]" if with_bos else "$A [EOS]"
    tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]")


def _text_config(max_pos: int) -> dict:
    return dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=max_pos, pad_token_id=0, bos_token_id=2, eos_token_id=3)


_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
               patch_size=16)


def tiny_clip(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config=_text_config(32), vision_config=dict(_VISION, image_size=224), projection_dim=16)
    CLIPModel(cfg).save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=word_tokenizer()).save_pretrained(directory)
    return directory


def tiny_siglip(directory: Path, seed: int = 0) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    torch.manual_seed(seed)
    cfg = SiglipConfig(text_config=_text_config(16), vision_config=_VISION)
    SiglipModel(cfg).save_pretrained(directory)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 64, "width": 64}),
                    tokenizer=word_tokenizer(with_bos=False)).save_pretrained(directory)
    return directory


def siglip2_tokenizer():
    """A BPE trained in memory, handed to the Gemma-style ``Siglip2Tokenizer`` that SigLIP 2 uses."""
    import json as _json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_previous")
    tk.train_from_iterator([PROMPT_WORDS] * 4, trainers.BpeTrainer(vocab_size=200, special_tokens=specials))
    model = _json.loads(tk.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Siglip2Tokenizer(vocab=model["vocab"], merges=merges)


def tiny_siglip2(directory: Path, seed: int = 0) -> Path:
    """SigLIP 2 (NaFlex: patches + attention mask + spatial shapes), 16 patches per image."""
    import torch
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor

    torch.manual_seed(seed)
    tok = siglip2_tokenizer()
    text = dict(_text_config(16), vocab_size=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                  num_patches=16)
    Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).save_pretrained(directory)
    Siglip2Processor(image_processor=Siglip2ImageProcessor(max_num_patches=16, patch_size=16),
                     tokenizer=tok).save_pretrained(directory)
    return directory


def road_images(n: int, seed: int = 0, size: int = 224) -> typing.List[np.ndarray]:
    """Varied RGB uint8 images (sky over a grey road with coloured blobs)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im = np.empty((size, size, 3), np.uint8)
        im[: size // 2] = rng.integers(90, 230, 3)
        im[size // 2:] = rng.integers(40, 120)
        for _ in range(4):
            y, x = rng.integers(0, size - 30, 2)
            im[y:y + 30, x:x + 20] = rng.integers(0, 255, 3)
        out.append(im)
    return out


def write_profile(path: Path, yaml_text: str) -> Path:
    path.write_text(yaml_text)
    return path
