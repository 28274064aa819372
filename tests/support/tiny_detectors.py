"""Tiny real detector / open-vocabulary / depth models (random weights) saved to disk for expert tests.

Every builder writes what the expert loads in production (a ``.pt``, an rfdetr checkpoint, a
``save_pretrained`` directory with its processor and a locally built tokenizer), with configs shrunk
so a forward pass is cheap on 2 CPU cores. ``boost`` raises one class's head bias so that class is
detected everywhere with a high score: a controlled input for the mapping and aggregation.

Usage::

    from tests.support.tiny_detectors import yolo_pt, scenes, profile_file
    pt = yolo_pt(tmp_path / "y.pt", "yolo11n.yaml", boost=3)
"""

import typing
from pathlib import Path

import numpy as np

PROMPT_WORDS = "traffic cone construction barrier road work sign excavator worker in safety vest a photo of the"


def scenes(n: int, size: int = 224, seed: int = 0) -> typing.List[np.ndarray]:
    """Dashcam-like RGB frames: sky, grey road narrowing to the horizon, a few orange cones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = np.zeros((size, size, 3), np.uint8)
        img[: size // 2] = (135, 180, 230)
        img[size // 2:] = (90, 140, 60)
        for r in range(size // 2, size):
            half = int((r - size // 2) / (size / 2) * size * 0.6) + 2
            img[r, max(0, size // 2 - half): size // 2 + half] = (100, 100, 105)
        for _ in range(int(rng.integers(1, 4))):
            r = int(rng.integers(size * 0.6, size * 0.9))
            c = int(rng.integers(size * 0.2, size * 0.8))
            h = max(4, int((r - size // 2) * 0.25))
            for k in range(h):
                w = max(1, k // 2)
                img[r - h + k, max(0, c - w): c + w + 1] = (250, 120, 20)
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
        out.append(img)
    return out


def decoded(images: typing.Sequence[np.ndarray]):
    """Real JPEGs through the production decoder, as the engine hands them to experts."""
    import io

    from PIL import Image

    from natix_miner.imaging.decode import decode_bytes

    res = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=90)
        res.append(decode_bytes(buf.getvalue()))
    return res


def profile_file(path: Path, yaml_text: str):
    from natix_miner.config import load_profile

    path.write_text(yaml_text)
    return load_profile(path)


# -- closed-set detectors -------------------------------------------------------------------------
def yolo_pt(path: Path, yaml_name: str, boost: typing.Optional[int] = None, seed: int = 0) -> Path:
    """An ultralytics model built from a bundled yaml and saved as a local ``.pt``."""
    import torch
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(seed)
    model = (RTDETR if "rtdetr" in yaml_name else YOLO)(yaml_name)
    if boost is not None:
        head = model.model.model[-1]
        with torch.no_grad():
            if hasattr(head, "cv3"):
                for seq in list(head.cv3) + list(getattr(head, "one2one_cv3", None) or []):
                    seq[-1].bias[boost] = 12.0
            else:  # RT-DETR decoder
                for lin in list(head.dec_score_head) + [head.enc_score_head]:
                    lin.bias[boost] = 12.0
    model.save(str(path))
    return path


def rfdetr_checkpoint(path: Path, class_names: typing.Sequence[str], boost: typing.Optional[int] = None,
                      seed: int = 0) -> Path:
    """An RF-DETR Nano with random weights, saved as an rfdetr checkpoint with class names."""
    import torch
    from rfdetr import RFDETRNano

    torch.manual_seed(seed)
    rf = RFDETRNano(pretrain_weights=None, num_classes=len(class_names), resolution=224, device="cpu")
    net = rf.model.model
    if boost is not None:
        with torch.no_grad():
            net.class_embed.bias[boost] = 12.0
            for head in getattr(net.transformer, "enc_out_class_embed", []) or []:
                head.bias[boost] = 12.0
    torch.save({"model": net.state_dict(), "model_name": "RFDETRNano",
                "args": {"class_names": list(class_names), "num_classes": len(class_names)}}, str(path))
    return path


def hf_detector(directory: Path, kind: str, id2label: typing.Mapping[int, str], size: int = 128, seed: int = 0) -> Path:
    """A shrunk transformers detector (``d_fine``, ``rt_detr_v2``, ``rf_detr``) + image processor."""
    import torch
    import transformers as T

    labels = dict(id2label=dict(id2label), label2id={v: k for k, v in id2label.items()})
    small = dict(encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128], encoder_ffn_dim=64,
                 encoder_attention_heads=2, d_model=32, decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64,
                 decoder_attention_heads=2, decoder_layers=2, num_queries=20, num_denoising=0)
    if kind == "d_fine":
        hg = dict(model_type="hgnet_v2", embedding_size=8, hidden_sizes=[16, 32, 64, 128], stem_channels=[3, 8, 8],
                  stage_in_channels=[8, 16, 32, 64], stage_mid_channels=[8, 16, 32, 64],
                  stage_out_channels=[16, 32, 64, 128], stage_num_blocks=[1, 1, 1, 1],
                  stage_numb_of_layers=[1, 1, 1, 1], stage_downsample=[False, True, True, True],
                  stage_light_block=[False, False, True, True], stage_kernel_size=[3, 3, 5, 5],
                  depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"])
        config, cls, proc = T.DFineConfig(backbone_config=hg, **small, **labels), T.DFineForObjectDetection, T.RTDetrImageProcessor
    elif kind == "rt_detr_v2":
        rn = dict(model_type="rt_detr_resnet", embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
        config, cls, proc = T.RTDetrV2Config(backbone_config=rn, **small, **labels), T.RTDetrV2ForObjectDetection, T.RTDetrImageProcessor
    elif kind == "rf_detr":
        bb = dict(model_type="rf_detr_dinov2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  image_size=size, patch_size=16, num_windows=2, out_indices=[1, 2])
        config = T.RfDetrConfig(backbone_config=bb, d_model=32, decoder_ffn_dim=64, decoder_layers=1,
                                decoder_self_attention_heads=2, decoder_cross_attention_heads=2, num_queries=20,
                                group_detr=1, **labels)
        cls, proc = T.RfDetrForObjectDetection, T.RfDetrImageProcessor
    else:
        raise ValueError(kind)
    torch.manual_seed(seed)
    cls(config).eval().save_pretrained(directory)
    proc(size={"height": size, "width": size}).save_pretrained(directory)
    return directory


# -- open vocabulary -------------------------------------------------------------------------------
def clip_word_tokenizer(words: str = PROMPT_WORDS, max_length: int = 16):
    """A word-level tokenizer in CLIP's layout: pad "!" = 0, end-of-text is the largest id (OWL pools there)."""
    from natix_miner.standins.tokenizers import clip_tokenizer

    tok = clip_tokenizer(words.split(), max_length=max_length)
    return tok, tok.get_vocab()


def bert_vocab(words: str = PROMPT_WORDS) -> typing.Dict[str, int]:
    """A BERT vocabulary with [CLS]=101, [SEP]=102, "."=1012, "?"=1029 where Grounding DINO expects them."""
    toks = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += [f"[unused{i}]" for i in range(99, 99 + 1012 - len(toks))] + ["."]
    toks += [f"[unused{i}]" for i in range(2000, 2000 + 1029 - len(toks))] + ["?"]
    toks += sorted(set(words.split())) + [","]
    vocab = {t: i for i, t in enumerate(toks)}
    assert (vocab["[CLS]"], vocab["[SEP]"], vocab["."], vocab["?"]) == (101, 102, 1012, 1029)
    return vocab


def grounding_dino(directory: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    vocab = bert_vocab()
    tok = T.BertTokenizer(vocab=vocab, do_lower_case=True)
    config = T.GroundingDinoConfig(
        backbone_config=T.SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                                     image_size=128, out_features=["stage2", "stage3", "stage4"]),
        text_config=T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, max_text_len=32,
        disable_custom_kernels=True)
    torch.manual_seed(seed)
    T.GroundingDinoForObjectDetection(config).eval().save_pretrained(directory)
    ip = T.GroundingDinoImageProcessor(size={"shortest_edge": 128, "longest_edge": 128})
    T.GroundingDinoProcessor(image_processor=ip, tokenizer=tok).save_pretrained(directory)
    return directory


def _clip_text(vocab, hidden=32, max_pos=16):
    return dict(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=max_pos, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)


def owlv2(directory: Path, seed: int = 0) -> Path:
    import torch
    import transformers as T

    tok, vocab = clip_word_tokenizer()
    config = T.Owlv2Config(text_config=_clip_text(vocab), projection_dim=32,
                           vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=128, patch_size=16))
    torch.manual_seed(seed)
    T.Owlv2ForObjectDetection(config).eval().save_pretrained(directory)
    T.Owlv2Processor(image_processor=T.Owlv2ImageProcessor(size={"height": 128, "width": 128}),
                     tokenizer=tok).save_pretrained(directory)
    return directory


def sam3(directory: Path, seed: int = 0) -> Path:
    """SAM 3 shrunk from 840 M to ~0.25 M parameters (112 px input, one-layer heads)."""
    import torch
    import transformers as T

    tok, vocab = clip_word_tokenizer()
    h = 32
    layer = dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64)
    config = T.Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=h, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=112, patch_size=14, window_size=4,
                                 global_attn_indexes=[1], pretrain_image_size=112),
            fpn_hidden_size=h, backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]]),
        text_config=dict(_clip_text(vocab, h, max_pos=32), projection_dim=h),  # Sam3Processor pads text to 32
        geometry_encoder_config=layer, detr_encoder_config=layer,
        detr_decoder_config=dict(layer, num_queries=10), mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))
    torch.manual_seed(seed)
    T.Sam3Model(config).eval().save_pretrained(directory)
    ip = T.Sam3ImageProcessor(size={"height": 112, "width": 112}, mask_size={"height": 32, "width": 32})
    T.Sam3Processor(image_processor=ip, tokenizer=tok).save_pretrained(directory)
    return directory


# -- depth -------------------------------------------------------------------------------------------
def depth_anything(directory: Path, kind: str = "relative", max_depth: int = 20, seed: int = 0) -> Path:
    """A shrunk Depth Anything (DINOv2 backbone + DPT head), relative or metric, with its processor."""
    import torch
    import transformers as T

    backbone = T.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                              image_size=112, patch_size=14, out_features=["stage1", "stage2", "stage3", "stage4"],
                              reshape_hidden_states=False)
    config = T.DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                                   fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type=kind,
                                   max_depth=int(max_depth))
    torch.manual_seed(seed)
    T.DepthAnythingForDepthEstimation(config).eval().save_pretrained(directory)
    T.DPTImageProcessor(size={"height": 112, "width": 112}, image_mean=[0.485, 0.456, 0.406],
                        image_std=[0.229, 0.224, 0.225]).save_pretrained(directory)
    return directory


def timm_det_checkpoint(path: Path, classes: typing.Sequence[str], arch: str = "tf_efficientnet_lite0",
                        size: int = 224, seed: int = 0) -> Path:
    """A ``timm_det`` checkpoint (CenterNet on ``arch``) with random weights, in the family's format."""
    import torch

    from natix_miner.experts.timm_det import save_checkpoint
    from natix_miner.experts.timm_det_net import CenterNet

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(CenterNet(arch, len(classes), width=16), path, arch, classes, size, 16)
    return path


def detector_experts(directory: Path) -> typing.List[dict]:
    """One expert spec (profile dict) per family of this area, tiny models written under ``directory``:
    ``ultralytics``, ``rfdetr``, ``hf_detector``, ``timm_det``, ``grounding_dino``, ``owlv2``, ``sam3``, ``depth``
    (the depth expert runs the YOLO detector inside it). For all-family engine profiles."""
    directory.mkdir(parents=True, exist_ok=True)
    y11 = yolo_pt(directory / "y11.pt", "yolo11n.yaml", boost=3)
    prompts = {"cone": ["traffic cone"], "worker": ["worker in safety vest"]}
    return [
        {"name": "det_yolo", "family": "ultralytics", "model": str(y11),
         "options": {"imgsz": 160, "classes": {"cone": [3]}}},
        {"name": "det_rfdetr", "family": "rfdetr",
         "model": str(rfdetr_checkpoint(directory / "rf.pth", ["cone", "barrier"])),
         "options": {"resolution": 224, "classes": {"cone": ["cone"], "barrier": ["barrier"]}}},
        {"name": "det_dfine", "family": "hf_detector",
         "model": str(hf_detector(directory / "dfine", "d_fine", {0: "cone", 1: "barrier"})),
         "options": {"classes": {"cone": ["cone"], "barrier": ["barrier"]}}},
        {"name": "det_timm", "family": "timm_det",
         "model": str(timm_det_checkpoint(directory / "timm_det.pt", ["cone", "barrier"])),
         "options": {"conf": 0.0, "classes": {"cone": ["cone"], "barrier": ["barrier"]}}},
        {"name": "ov_gdino", "family": "grounding_dino", "model": str(grounding_dino(directory / "gdino")),
         "options": {"prompts": prompts}},
        {"name": "ov_owlv2", "family": "owlv2", "model": str(owlv2(directory / "owl")), "options": {"prompts": prompts}},
        {"name": "ov_sam3", "family": "sam3", "model": str(sam3(directory / "sam3")), "options": {"prompts": prompts}},
        {"name": "depth_check", "family": "depth", "model": str(depth_anything(directory / "depth", "relative")),
         "options": {"detector": "det_yolo", "image_size": 112}},
    ]
